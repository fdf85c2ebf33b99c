"""The fast training path's pieces: mixed-precision choice, batches to the device, the recommended settings."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from .options import Options
from .presets import PIPELINES as INPUT_PIPELINES
from .presets import normalize_on_device

__all__ = ["AMP_CHOICES", "FAST_SETTINGS", "INPUT_PIPELINES", "PerformanceOptions", "add_options", "amp_dtype_for",
           "cpu_bf16_speedup", "describe_amp", "native_bf16", "set_tf32", "to_device"]

AMP_CHOICES = ("off", "fp16", "bf16", "auto")
_AMP_DTYPES = {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}

# What configs/recipes/fast.yaml adds to a paper recipe (tests check the two agree); the benchmark's "recommended"
# settings.
FAST_SETTINGS = {"amp": "auto", "channels_last": True, "compile": True, "input_pipeline": "uint8", "simam_impl": "auto"}


@dataclass(frozen=True)
class PerformanceOptions(Options):
    """How fast the steps run: precision, memory layout, compilation."""

    amp: str = "off"
    no_tf32: bool = False
    channels_last: bool = False
    compile: bool = False

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("precision and speed")
    arg = group.add_argument
    arg("--amp", default=PerformanceOptions.amp, choices=AMP_CHOICES,
        help="mixed precision; fp16 uses a gradient scaler; auto: bf16 where the device computes it faster than "
             "fp32 (GPUs with native bf16; on a CPU, measured once by a short probe and kept in "
             "~/.cache/simam-imagenet/amp-probe.json), else fp16 on CUDA, else off")
    arg("--no-tf32", action="store_true",
        help="fp32 matrix products and convolutions in full fp32 on GPUs from Ampere on (default: TF32 for both, "
             "as torch does for convolutions; under --amp, for the operations autocast keeps in fp32)")
    arg("--channels-last", action="store_true", help="channels_last memory format for the model and inputs")
    arg("--compile", action="store_true", help="torch.compile the model (the first steps are slower while it compiles)")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively and faster than in fp32: CUDA with bf16 support; on a CPU, where
    ``cpu_bf16_speedup`` measures bf16 faster (CPU flags cannot tell: with AVX512-BF16 and no AMX, oneDNN's bf16
    convolutions were 1.55x slower than fp32 on a 2-core Xeon and bf16 training 1.61x faster on a 2-core EPYC)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return cpu_bf16_speedup()[0] > 1.0
    return False


def amp_dtype_for(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--amp`` on ``device`` (None: fp32). 'auto' is bf16 where the device computes it
    faster than fp32 (``native_bf16``), else fp16 on CUDA, else fp32."""
    if amp == "auto":
        if native_bf16(device):
            return torch.bfloat16
        return torch.float16 if device.type == "cuda" else None
    return _AMP_DTYPES[amp]


def describe_amp(amp: str, device: torch.device) -> str:
    """Why ``--amp`` gives ``amp_dtype_for(amp, device)``, for the run's header."""
    if amp != "auto":
        return f"--amp {amp}"
    if device.type == "cuda":
        return ("--amp auto: bf16, which this GPU computes natively" if native_bf16(device) else
                "--amp auto: fp16 with a gradient scaler, as this GPU has no native bf16")
    if device.type != "cpu":
        return "--amp auto: fp32"
    speedup, cache = cpu_bf16_speedup()
    return (f"--amp auto: {'bf16' if speedup > 1.0 else 'fp32'}, as a bf16 convolution forward+backward ran "
            f"{speedup:.2f}x the speed of fp32 on this CPU (measured once, kept in {cache})")


# The probe: a 3x3 convolution of ResNet's first stage at 224 px (64 channels, 56x56), channels_last, batch 4.
_PROBE_SHAPE = (4, 64, 56, 56)


def cpu_bf16_speedup(cache_dir: str | None = None) -> tuple[float, str]:
    """fp32 time / bf16 time of a representative convolution's forward and backward on this CPU (> 1: bf16 is
    faster), measured in well under a second the first time and kept per machine and torch version in
    ``<cache_dir or ~/.cache>/simam-imagenet/amp-probe.json``; returns (speedup, that file)."""
    folder = os.path.join(cache_dir or os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                          "simam-imagenet")
    path = os.path.join(folder, "amp-probe.json")
    key = f"{_cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads"
    try:
        with open(path) as f:
            known = json.load(f)
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if not isinstance(known.get(key), dict) or not isinstance(known[key].get("speedup"), float):
        known[key] = {"speedup": _measure_bf16_speedup(), "shape": list(_PROBE_SHAPE),
                      "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            os.makedirs(folder, exist_ok=True)
            tmp = f"{path}.tmp{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(known, f, indent=2)
            os.replace(tmp, path)
        except OSError:  # a read-only home: measured again next time
            pass
    return known[key]["speedup"], path


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return f"{name} [{' '.join(sorted(flag for flag in flags if 'bf16' in flag or flag.startswith('amx')))}]"


def _measure_bf16_speedup(rounds: int = 3) -> float:
    """The probe itself: fp32 and bf16 autocast timed in alternation, best of ``rounds`` each after a warm-up."""
    generator = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(64, 64, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    x = torch.randn(_PROBE_SHAPE, generator=generator).to(memory_format=torch.channels_last).requires_grad_()

    def step(dtype: torch.dtype | None) -> float:
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out = conv(x)
        out.float().sum().backward()
        return time.perf_counter() - started

    with torch.random.fork_rng(devices=[]):
        best = {None: step(None), torch.bfloat16: step(torch.bfloat16)}  # warm-up: oneDNN builds its kernels
        best = {dtype: float("inf") for dtype in best}
        for _ in range(rounds):
            for dtype in best:
                best[dtype] = min(best[dtype], step(dtype))
    return best[None] / best[torch.bfloat16]


def set_tf32(enabled: bool) -> None:
    """Whether fp32 matrix products and convolutions may use TF32 tensor cores (GPUs from Ampere on; nothing
    changes elsewhere). torch's defaults differ, TF32 for convolutions but not for matrix products (the
    classifier), so both are set here, one way."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def to_device(images: Tensor, target: Tensor, device: torch.device,
              memory_format: torch.memory_format = torch.contiguous_format) -> tuple[Tensor, Tensor]:
    """Move a batch to ``device`` without waiting for the copy; uint8 images (the uint8 input pipeline) are
    normalised there, in one operation for the whole batch."""
    target = target.to(device, non_blocking=True)
    if images.dtype == torch.uint8:
        return normalize_on_device(images.to(device, non_blocking=True), memory_format), target
    return images.to(device, non_blocking=True, memory_format=memory_format), target


# dynamo's recompile budget (``recompile_limit``, 8 graphs) belongs to a code object: unless a compile is isolated,
# every model of a class (training, evaluation and EMA models alike) spends the one budget of its ``forward``.
_DYNAMO_BUDGET = 8


def _isolates_recompiles() -> bool:
    """Whether ``torch.compile`` can give a compile its own budget (``isolate_recompiles``)."""
    import inspect

    return "isolate_recompiles" in inspect.signature(torch.compile).parameters


def _widen_recompile_budget() -> None:
    """Where compiles cannot be isolated: one more model's worth of graphs in the budget the models share."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # (the older name)
    setattr(config, name, getattr(config, name) + _DYNAMO_BUDGET)


def compile_model(model: nn.Module, backend: str | Callable = "inductor") -> nn.Module:
    """``torch.compile`` with static shapes: a smaller last batch, and each size of a ``--train-size-schedule``,
    is one more graph, compiled on its first use and reused after (shapes never become dynamic). Each compiled
    model has its own recompile budget: past a shared one, new shapes would run eager without a word."""
    if _isolates_recompiles():
        return torch.compile(model, dynamic=False, backend=backend, isolate_recompiles=True)
    _widen_recompile_budget()
    return torch.compile(model, dynamic=False, backend=backend)
