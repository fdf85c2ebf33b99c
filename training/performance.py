"""The fast training path's pieces: mixed-precision choice, batches to the device, the recommended settings."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from .presets import PIPELINES as INPUT_PIPELINES
from .presets import normalize_on_device

__all__ = ["AMP_CHOICES", "FAST_SETTINGS", "INPUT_PIPELINES", "amp_dtype_for", "native_bf16", "set_tf32", "to_device"]

AMP_CHOICES = ("off", "fp16", "bf16", "auto")
_AMP_DTYPES = {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}

# What configs/fast/ adds to a paper recipe (tests check the two agree); the benchmark's "recommended" settings.
FAST_SETTINGS = {"amp": "auto", "channels_last": True, "compile": True, "input_pipeline": "uint8", "simam_impl": "auto"}


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively and faster than in fp32: CUDA with bf16 support, CPUs with AMX.
    (With AVX512-BF16 alone, oneDNN's bf16 convolutions are slower than fp32 ones: 1.55x on a 2-core Xeon, see
    results/benchmarks/simam-bn-goals-cpu.md.)"""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        init_amx = getattr(torch._C._cpu, "_init_amx", None)  # True where the CPU has AMX tiles (and the OS allows)
        return (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
                and bool(init_amx and init_amx()))
    return False


def amp_dtype_for(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--amp`` on ``device`` (None: fp32). 'auto' is bf16 where the device has it
    natively, else fp16 on CUDA, else fp32."""
    if amp == "auto":
        if native_bf16(device):
            return torch.bfloat16
        return torch.float16 if device.type == "cuda" else None
    return _AMP_DTYPES[amp]


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
