#!/usr/bin/env python
"""GPU acceptance checks: the paths only a GPU runs, each check printing PASS, FAIL or SKIP with its figures.

    python scripts/gpu_check.py                              # every check on GPU 0: at most ~8 minutes on an H100/H200
    python scripts/gpu_check.py --checks simam_parity,fp16_guard
    python scripts/gpu_check.py --device cpu                 # the dry run: the same checks at small sizes (CI)

One failing check does not stop the others: its error (the traceback's last line and where it was raised) is
recorded and the next check runs. The report is ``<output-dir>/gpu-check-<device>.json`` with a markdown summary
beside it (``.md``); the exit status is 1 when a check failed, 2 for bad options. The throughput and inference checks
leave out the models that would not fit in ``--time-budget`` (saying so). On the CPU the sizes are small and the
CUDA-only checks and aspects are SKIP with the reason: the dry run exercises the code; its figures say nothing about
a GPU.
"""

from __future__ import annotations

import time

START = time.monotonic()  # the time budget counts from here (imports included)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import gc  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from functools import partial  # noqa: E402
from typing import Any, Callable  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import networks  # noqa: E402
from networks.attentions import simam_kernels  # noqa: E402
from scripts._cli import make_cli  # noqa: E402
from scripts.benchmark import (  # noqa: E402
    CountingBackend,
    TrainBench,
    device_tag,
    environment,
    peak_memory,
    synchronize,
    time_benches,
)
from training import distributed  # noqa: E402
from training.data import DataOptions, build_data  # noqa: E402
from training.ema import build_ema  # noqa: E402
from training.engine import StepOptions, train_step  # noqa: E402
from training.errors import UserError  # noqa: E402
from training.metrics import RunningSums  # noqa: E402
from training.mixing import BatchMixer, dominant_label  # noqa: E402
from training.optim import NonFiniteGuard, build_optimizer, flatten_buffers  # noqa: E402
from training.performance import FAST_SETTINGS, amp_dtype_for, compile_model, set_tf32, to_device  # noqa: E402
from training.presets import IMAGENET_STD, normalize_on_device  # noqa: E402
from training.schedule import build_scheduler  # noqa: E402
from training.state import TrainState  # noqa: E402

warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")
warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")

CL = torch.channels_last
ARCHS = ("resnet18", "resnet50", "mobilenet_v2")


@dataclass(frozen=True)
class Sizes:
    """How big each check runs on a device type: enough to mean something on a GPU, a few minutes on a 2-core CPU."""

    batch: int  # fp16_guard, no_host_sync, ddp_compiled_accum
    image: int  # (96 on CUDA: no stage of ResNet-18 has H = N, so SimAM's kernels compile one variant per dtype)
    sync_steps: int  # no_host_sync: steps under the debug mode (after 2 warm-up steps)
    simam_shape: tuple[int, int, int, int]  # H = W, N != C (as in the models): one compiled variant per dtype, layout
    simam_odd_shape: tuple[int, int, int, int]  # every size different (fp32, contiguous, eager kernels)
    simam_compiled_dtypes: tuple[torch.dtype, ...]
    data: dict  # uint8_pinned: make_dataset's options
    data_crop: int
    data_workers: int
    quickstart_data: dict
    quickstart_argv: tuple[str, ...]
    bench_archs: tuple[str, ...]
    bench_image: int
    bench_batch: int  # the largest tried (halved on out-of-memory)
    bench_warmup: int
    bench_rounds: int
    bench_per_round: int
    pipeline_images: int
    pipeline_repeats: int
    compile_backend: str  # whole-model compiles of ddp_compiled_accum, train_throughput and inference
    simam_impl: str  # the models' SimAM kernels outside simam_parity
    time_budget: float  # seconds, default of --time-budget
    check_limit: float  # seconds one check may take before it is stopped
    arch_estimate: float  # seconds a train_throughput model pair takes before one was measured
    reserve: dict  # seconds kept for the checks after train_throughput


SIZES = {
    "cuda": Sizes(
        batch=16, image=96, sync_steps=3, simam_shape=(6, 40, 28, 28), simam_odd_shape=(3, 5, 7, 9),
        simam_compiled_dtypes=(torch.float32, torch.bfloat16, torch.float16),
        data=dict(classes=4, train_per_class=8, val_per_class=8, size=80), data_crop=64, data_workers=2,
        quickstart_data=dict(classes=4, train_per_class=64, val_per_class=16, size=64),
        quickstart_argv=("--epochs", "2", "-b", "64", "-j", "4", "--compile", "--simam-impl", "auto"),
        bench_archs=ARCHS, bench_image=224, bench_batch=256, bench_warmup=2, bench_rounds=3, bench_per_round=5,
        pipeline_images=64, pipeline_repeats=3, compile_backend="inductor", simam_impl="auto",
        time_budget=460.0, check_limit=240.0, arch_estimate=60.0, reserve={"inference": 45.0, "input_pipeline": 20.0}),
    "cpu": Sizes(
        batch=4, image=32, sync_steps=3, simam_shape=(2, 8, 6, 6), simam_odd_shape=(3, 5, 7, 9),
        simam_compiled_dtypes=(torch.float32,),
        data=dict(classes=2, train_per_class=4, val_per_class=4, size=40), data_crop=24, data_workers=1,
        quickstart_data=dict(classes=3, train_per_class=8, val_per_class=4, size=32),
        quickstart_argv=("--epochs", "2", "-b", "8", "-j", "1", "--train-crop-size", "32", "--val-resize-size", "36",
                         "--val-crop-size", "32", "--simam-impl", "eager", "--gpu", "cpu"),
        bench_archs=("resnet18",), bench_image=64, bench_batch=4, bench_warmup=1, bench_rounds=2, bench_per_round=1,
        pipeline_images=8, pipeline_repeats=2, compile_backend="aot_eager", simam_impl="eager",
        time_budget=330.0, check_limit=240.0, arch_estimate=20.0, reserve={"inference": 15.0, "input_pipeline": 10.0}),
}

# What the CPU dry run leaves out, and why (said in the figures of the checks concerned).
CPU_NOTES = {
    "compile": "whole-model torch.compile on the CPU uses the aot_eager backend (graph capture and AOT autograd, no "
               "inductor code generation: about a minute per graph on a 2-core CPU)",
    "simam_impl": "models outside simam_parity run SimAM's eager kernels (compiling the C++ kernels costs ~5 s per "
                  "variant on a 2-core CPU; simam_parity compiles them)",
    "quickstart_compile": "the quick start runs without --compile on the CPU (inductor compiles each graph in about a "
                          "minute there); ddp_compiled_accum, train_throughput and inference compile",
    "bench_archs": "CPU dry run: resnet18 alone, at batch 4 and 64 px, exercises the code (figures not meaningful)",
}


# ---------------------------------------------------------------------------------------------------------
# What a check returns, and what it is given
# ---------------------------------------------------------------------------------------------------------

def verdict(ok: bool, summary: str, **figures: Any) -> dict[str, Any]:
    """A check's result: PASS when ``ok``, else FAIL; ``summary`` is one line, ``figures`` what was measured."""
    return {"status": "PASS" if ok else "FAIL", "summary": summary, "figures": figures}


def skip(reason: str, **figures: Any) -> dict[str, Any]:
    return {"status": "SKIP", "summary": reason, "figures": figures}


@dataclass
class Run:
    """What every check is given: the device, its sizes, a scratch folder, the deadline of the whole run, the
    results of the checks before it and objects they leave for later ones (``shared``)."""

    device: torch.device
    sizes: Sizes
    workdir: str
    deadline: float
    quick: bool = False
    selected: tuple[str, ...] = ()
    results: dict[str, dict] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def synchronize(self) -> None:
        synchronize(self.device)

    def reserve_after(self, name: str) -> float:
        """Seconds to keep for the selected checks after ``name``."""
        later = list(CHECKS)[list(CHECKS).index(name) + 1:]
        return sum(self.sizes.reserve.get(other, 0.0) for other in later if other in self.selected)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want|, in float64."""
    got, want = got.detach().double(), want.detach().double()
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def as_training_keeps(model: nn.Module) -> nn.Module:
    """The model's buffers stored as ``training.run.fit`` stores them (one storage, for the guard)."""
    flatten_buffers(model)
    return model


def out_of_memory(error: BaseException) -> bool:
    """Whether ``error``, or the error a compiler failure wraps, is the device running out of memory."""
    while isinstance(getattr(error, "inner_exception", None), BaseException):
        error = error.inner_exception
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error)


def short_path(filename: str) -> str:
    """A source file as a path inside the repository or inside site-packages (no machine paths)."""
    if filename.startswith(ROOT + os.sep):
        return os.path.relpath(filename, ROOT)
    marker = "site-packages" + os.sep
    return filename.split(marker, 1)[1] if marker in filename else os.path.basename(filename)


def where(error: BaseException) -> str:
    """The innermost frame of ``error``'s traceback, and the innermost one in the project's code when that differs."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return ""
    inner = frames[-1]
    text = f"{short_path(inner.filename)}:{inner.lineno} ({inner.name})"
    ours = [f for f in frames if f.filename.startswith(ROOT + os.sep) and f.filename != os.path.abspath(__file__)]
    if ours and ours[-1] is not inner:
        text += f", from {short_path(ours[-1].filename)}:{ours[-1].lineno} ({ours[-1].name})"
    return text


def last_line(error: BaseException) -> str:
    return traceback.format_exception_only(type(error), error)[-1].strip()


# ---------------------------------------------------------------------------------------------------------
# 1. fp16_guard
# ---------------------------------------------------------------------------------------------------------

def check_fp16_guard(run: Run) -> dict:
    """A ResNet-18+SimAM step under fp16 autocast whose gradients overflow (a hook multiplies one by inf), and one
    with a NaN image: the GradScaler on the device skips it and halves its scale, and every weight, buffer (BN
    running mean/var, num_batches_tracked) and momentum buffer is bitwise as before the step."""
    device, size = run.device, run.sizes
    cases, ok = {}, True
    for nonfinite in ("gradients", "image"):
        torch.manual_seed(0)
        model = networks.create_net("resnet18", "simam", num_classes=3, simam_impl=size.simam_impl).to(device)
        as_training_keeps(model)
        optimizer = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=1e-4)
        scaler = torch.amp.GradScaler(device.type, init_scale=2.0 ** 8)
        state = TrainState(model, optimizer, scheduler=None, scaler=scaler, iterations_per_epoch=3)
        options = StepOptions(distributed.Context(device), amp_dtype=torch.float16)
        guard = NonFiniteGuard(device, steps=3, model=model)
        x = torch.randn(size.batch, 3, size.image, size.image, device=device)
        y = torch.arange(size.batch, device=device) % 3
        train_step(model, x, y, state, options, guard, 0)
        before = copy.deepcopy(model.state_dict())
        momentum = [optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()]
        scale = scaler.get_scale()
        inputs = x
        if nonfinite == "image":
            inputs = x.clone()
            inputs[0, 0, 0, 0] = float("nan")
        moved = copy.deepcopy(model).train()  # what the step's forward pass alone does to the statistics
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16):
            moved(inputs)
        forward_moves_statistics = not torch.equal(moved.bn1.running_var, before["bn1.running_var"])
        hook = model.fc.weight.register_hook(lambda grad: grad * float("inf")) if nonfinite == "gradients" else None
        train_step(model, inputs, y, state, options, guard, 1)
        if hook is not None:
            hook.remove()
        after = model.state_dict()
        changed = [key for key, value in before.items() if not torch.equal(value, after[key])]
        momentum_changed = sum(not torch.equal(a, optimizer.state[p]["momentum_buffer"])
                               for a, p in zip(momentum, model.parameters()))
        case = {"scale_before": scale, "scale_after": scaler.get_scale(), "state_dict_entries": len(before),
                "changed_entries": changed[:5], "momentum_buffers_changed": momentum_changed,
                "forward_moves_bn_statistics": forward_moves_statistics,
                "found_inf_left_on_optimizer": hasattr(optimizer, "found_inf")}
        cases[nonfinite] = case
        ok &= (case["scale_after"] == scale / 2 and not changed and not momentum_changed and forward_moves_statistics
               and not case["found_inf_left_on_optimizer"])
    entries = cases["gradients"]["state_dict_entries"]
    if ok:
        summary = (f"GradScaler('{device.type}') skipped both steps (scale 256 -> 128); all {entries} weights and "
                   "buffers and every momentum buffer bitwise unchanged (overflowing gradients; a NaN image)")
    else:
        summary = "a skipped fp16 step changed state or kept the scale: " + "; ".join(
            f"{name}: scale {c['scale_before']:g} -> {c['scale_after']:g}, changed {c['changed_entries']}, "
            f"momentum changed {c['momentum_buffers_changed']}" for name, c in cases.items())
    return verdict(ok, summary, simam_impl=size.simam_impl,
                   batch=size.batch, image_size=size.image, cases=cases)


# ---------------------------------------------------------------------------------------------------------
# 2. no_host_sync
# ---------------------------------------------------------------------------------------------------------

class TrainingLoop:
    """The per-iteration work of ``training.engine.train_one_epoch`` on one fixed (pinned) uint8 batch, as phases:
    the batch to the device, MixUp/CutMix, ``train_step`` with the guard, the EMA update, the schedule and the
    running sums."""

    def __init__(self, run: Run, amp: str, steps: int) -> None:
        device, size = run.device, run.sizes
        torch.manual_seed(0)
        model = networks.create_net("resnet18", "simam", num_classes=10, simam_impl=size.simam_impl)
        model = as_training_keeps(model.to(device, memory_format=CL))
        optimizer = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=1e-4)
        self.amp_dtype = amp_dtype_for(amp, device)
        scheduler = build_scheduler(optimizer, steps, epochs=1, name="cosine", warmup_epochs=0.5)
        scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        ema = build_ema(model, 0.99998, steps=1, total_batch_size=size.batch, epochs=1)  # an update every step
        self.state = TrainState(model, optimizer, scheduler, scaler, steps, ema=ema)
        self.options = StepOptions(distributed.Context(device), memory_format=CL, amp_dtype=self.amp_dtype,
                                   mixer=BatchMixer(10, mixup_alpha=0.2, cutmix_alpha=1.0, seed=0))
        self.guard = NonFiniteGuard(device, steps, model)
        self.sums = RunningSums(device)
        images = torch.randint(0, 256, (size.batch, 3, size.image, size.image), dtype=torch.uint8)
        target = torch.randint(0, 10, (size.batch,))
        self.batch = (images.pin_memory(), target.pin_memory()) if run.cuda else (images, target)
        self.device = device

    def phases(self, iteration: int) -> list[tuple[str, Callable[[], None]]]:
        """The iteration's phases in order (each reads what the previous ones left in ``values``)."""
        values: dict[str, Any] = {}
        state, options = self.state, self.options

        def batch():
            values["images"], values["target"] = to_device(*self.batch, self.device, options.memory_format)

        def mixing():
            values["images"], values["mixed"] = options.mixer(values["images"], values["target"], 0, iteration, 0)

        def step():
            values["output"], values["loss"] = train_step(state.model, values["images"], values["mixed"], state,
                                                          options, self.guard, iteration)

        def ema():
            state.ema.maybe_update(state.model, iteration, 0)

        def schedule():
            state.scheduler.step()

        def sums():
            target = dominant_label(values["mixed"])
            loss = torch.nan_to_num(values["loss"].detach(), nan=0.0, posinf=0.0, neginf=0.0)
            self.sums.update(loss * target.size(0), values["output"], target)

        return [("to_device", batch), ("batch_mixer", mixing), ("train_step", step), ("ema.maybe_update", ema),
                ("scheduler.step", schedule), ("running_sums", sums)]


@contextlib.contextmanager
def sync_debug_mode(mode: str):
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


class HostReads(TorchDispatchMode):
    """Records the operations that read a tensor's values back to the host (on CUDA each one waits for the GPU):
    ``.item()``, ``bool()``, ``float()``, ``torch.equal``, ``nonzero`` and the like, with the line that called them."""

    OPS = {"aten::_local_scalar_dense", "aten::equal", "aten::nonzero", "aten::masked_select", "aten::_unique2",
           "aten::unique_dim", "aten::unique_consecutive"}
    INTERNAL = ("_python_dispatch.py", "_compile.py", "eval_frame.py", "_contextlib.py", "_tensor.py", "overrides.py",
                os.path.basename(__file__))

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in self.OPS:
            frames = [f for f in traceback.extract_stack() if os.path.basename(f.filename) not in self.INTERNAL]
            caller = frames[-1] if frames else None
            self.reads.append(f"{func._schema.name.split('::')[1]} at "
                              + (f"{short_path(caller.filename)}:{caller.lineno} ({caller.name})" if caller else "?"))
        return func(*args, **(kwargs or {}))


def check_no_host_sync(run: Run) -> dict:
    """Three training iterations (train_step with the guard, a BatchMixer, an EMA update, the schedule and the
    running sums, as train_one_epoch runs them) under ``torch.cuda.set_sync_debug_mode("error")`` after two warm-up
    iterations: no phase waits for the GPU. Under bf16 (or fp32; --amp auto) and fp16 (the GradScaler's path).
    On the CPU: SKIP, with the host reads each phase makes (which would be syncs on CUDA) in the figures."""
    steps, warmup = run.sizes.sync_steps, 2
    configs = {}
    for amp in ("auto", "fp16"):
        loop = TrainingLoop(run, amp, warmup + steps)
        for iteration in range(warmup):  # cuDNN's algorithm search, SimAM's kernels, lazy initialisations
            for _, phase in loop.phases(iteration):
                phase()
        run.synchronize()
        offenders: dict[str, str] = {}
        reads: dict[str, list[str]] = {}
        for iteration in range(warmup, warmup + steps):
            for name, phase in loop.phases(iteration):
                if not run.cuda:
                    with HostReads() as recorder:
                        phase()
                    if recorder.reads and name != "batch_mixer":  # the mixer's draws are CPU tensors by design
                        reads.setdefault(name, recorder.reads)
                    continue
                try:
                    with sync_debug_mode("error"):
                        phase()
                except RuntimeError as error:
                    if "synchroniz" not in str(error):
                        raise
                    offenders.setdefault(name, f"{last_line(error)} at {where(error)}")
                    phase()  # again, allowed to sync, so that the later phases have their inputs
        run.synchronize()
        precision = str(loop.amp_dtype).replace("torch.", "") if loop.amp_dtype else "fp32"
        configs[f"{amp} ({precision})"] = {"syncs": offenders} if run.cuda else {"cpu_host_reads": reads}
    if not run.cuda:
        found = sorted({f"{name}: {seen[0]}" for c in configs.values() for name, seen in c["cpu_host_reads"].items()})
        note = ("; on the CPU these phases read device values on the host (syncs on CUDA): " + "; ".join(found)
                if found else "; on the CPU no phase read a device value on the host")
        return skip("host syncs exist only on CUDA" + note, steps=steps, configs=configs)
    synced = sorted({name for c in configs.values() for name in c["syncs"]})
    summary = (f"{steps} iterations x {', '.join(configs)}: no host sync" if not synced else
               f"host syncs in {', '.join(synced)}: " + "; ".join(
                   f"{name}: {c['syncs'][name]}" for c in configs.values() for name in c["syncs"])[:600])
    return verdict(not synced, summary, steps=steps, warmup=warmup, batch=run.sizes.batch,
                   image_size=run.sizes.image, configs=configs)


# ---------------------------------------------------------------------------------------------------------
# 3. mixer_channels_last
# ---------------------------------------------------------------------------------------------------------

def check_mixer_channels_last(run: Run) -> dict:
    """BatchMixer (MixUp, CutMix, and the two drawn per batch) on a channels_last batch on the device: the mixed batch
    is channels_last (CUDA's roll() returns a contiguous tensor, the mixer restores the layout), its values and soft
    targets are those of the same mixing on the CPU, and a contiguous batch stays contiguous."""
    device = run.device
    torch.manual_seed(0)
    images = normalize_on_device(torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8).to(device), CL)
    target = torch.randint(0, 10, (8,)).to(device)
    mixers = {"mixup": BatchMixer(10, mixup_alpha=0.2, seed=0), "cutmix": BatchMixer(10, cutmix_alpha=1.0, seed=0),
              "both": BatchMixer(10, mixup_alpha=0.2, cutmix_alpha=1.0, seed=0)}
    roll_keeps_layout = images.roll(1, 0).is_contiguous(memory_format=CL)
    rows = []
    for kind, mixer in mixers.items():
        for iteration in range(2):
            mixed, soft = mixer(images, target, 0, iteration)
            cpu_mixed, cpu_soft = mixer(images.cpu(), target.cpu(), 0, iteration)
            contiguous, _ = mixer(images.contiguous(), target, 0, iteration)
            rows.append({"mixer": kind, "iteration": iteration,
                         "channels_last": mixed.is_contiguous(memory_format=CL) and not mixed.is_contiguous(),
                         "contiguous_stays": contiguous.is_contiguous(),
                         "dtype_and_device_kept": mixed.dtype == images.dtype and mixed.device == images.device,
                         "max_diff_vs_cpu": (mixed.cpu() - cpu_mixed).abs().max().item(),
                         "soft_target_diff_vs_cpu": (soft.cpu() - cpu_soft).abs().max().item(),
                         "soft_target_row_sum_error": (soft.sum(1) - 1).abs().max().item()})
    bad = [r for r in rows if not (r["channels_last"] and r["contiguous_stays"] and r["dtype_and_device_kept"]
                                   and r["max_diff_vs_cpu"] <= 1e-5 and r["soft_target_diff_vs_cpu"] <= 1e-6
                                   and r["soft_target_row_sum_error"] <= 1e-5)]
    summary = (f"{len(rows)} batches (MixUp, CutMix, both): channels_last kept on {device.type} (roll() alone keeps "
               f"it: {roll_keeps_layout}), values and soft targets as on the CPU, a contiguous batch stays contiguous"
               if not bad else f"{len(bad)} of {len(rows)} batches wrong: {bad[:2]}")
    return verdict(not bad, summary, roll_keeps_channels_last=roll_keeps_layout, batches=rows)


# ---------------------------------------------------------------------------------------------------------
# 4. simam_parity
# ---------------------------------------------------------------------------------------------------------

# (output, gradients) as max |diff| / max |reference|: fp32 against the paper's formula in fp32 on the device,
# fp16/bf16 against the formula in float64 of the same inputs; as tests/test_simam_fused.py (SimAM) and
# tests/test_simam_bn.py (SimAM + BN) state them (gradients: 4x the output's).
TOLERANCES = {
    "simam": {torch.float32: (1e-5, 1e-4), torch.float16: (3e-3, 1.2e-2), torch.bfloat16: (2e-2, 8e-2)},
    "simam_bn": {torch.float32: (1e-5, 1e-4), torch.float16: (4e-3, 1.6e-2), torch.bfloat16: (3e-2, 1.2e-1)},
}
ROUNDING_SHARE = 0.01  # compiled vs eager SimAM + BN in fp16/bf16: the share of elements allowed to differ


def _grads(fn: Callable, x: torch.Tensor, grad: torch.Tensor, params: list[torch.Tensor]):
    x = x.detach().requires_grad_(True)
    out = fn(x)
    return out, torch.autograd.grad(out, [x, *params], grad)


def _random_norm(channels: int, device: torch.device) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(channels).to(device)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.2, 0.2)
        norm.running_mean.uniform_(-0.2, 0.2)
        norm.running_var.uniform_(0.5, 1.5)
    return norm


def simam_row(device: torch.device, implementation: str, dtype: torch.dtype, layout: torch.memory_format,
              shape: tuple[int, ...]) -> dict:
    """SimAM alone (``simam_fused``) against the paper's formula: output and input gradient."""
    torch.manual_seed(0)
    if dtype == torch.float32:
        x = (torch.randn(shape, device=device) * 3 + 1).to(memory_format=layout)
        grad = torch.randn(shape, device=device)
        want, (want_grad,) = _grads(lambda t: networks.simam(t, 0.1), x, grad, [])
    else:  # large values: the channel sums overflow fp16 unless the statistics are fp32
        x = (torch.randn(shape, device=device) * 60).to(dtype).to(memory_format=layout)
        grad = torch.randn(shape, device=device).to(dtype)
        want, (want_grad,) = _grads(lambda t: networks.simam(t, 0.1), x.double(), grad.double(), [])
    got, (got_grad,) = _grads(lambda t: networks.simam_fused(t, 0.1, implementation), x, grad, [])
    out_tol, grad_tol = TOLERANCES["simam"][dtype]
    row = {"op": "simam", "implementation": implementation, "dtype": str(dtype).replace("torch.", ""),
           "layout": "channels_last" if layout == CL else "contiguous", "shape": list(shape),
           "output_error": relative_error(got, want), "grad_error": relative_error(got_grad, want_grad),
           "tolerance": [out_tol, grad_tol],
           "dtype_kept": got.dtype == dtype and got_grad.dtype == dtype,
           "layout_kept": got.is_contiguous(memory_format=layout)}
    row["ok"] = (row["output_error"] <= out_tol and row["grad_error"] <= grad_tol and row["dtype_kept"]
                 and row["layout_kept"])
    return row


def simam_bn_row(device: torch.device, implementation: str, dtype: torch.dtype, layout: torch.memory_format,
                 shape: tuple[int, ...]) -> dict:
    """SimAM + training-mode BN as one step (``simam_batch_norm``, networks/simam_bn.py) against the paper's
    formula followed by nn.BatchNorm2d: output, gradients of input, weight and bias, running statistics."""
    torch.manual_seed(0)
    norm = _random_norm(shape[1], device)
    fused_norm = copy.deepcopy(norm)
    if dtype == torch.float32:
        x = (torch.randn(shape, device=device) * 3 + 1).to(memory_format=layout)
        grad = torch.randn(shape, device=device)
        reference_norm, reference_x, reference_grad = norm, x, grad
    else:
        x = (torch.randn(shape, device=device) * 60).to(dtype).to(memory_format=layout)
        grad = torch.randn(shape, device=device).to(dtype)
        reference_norm, reference_x, reference_grad = copy.deepcopy(norm).double(), x.double(), grad.double()
    want, want_grads = _grads(lambda t: reference_norm(networks.simam(t, 0.1)), reference_x, reference_grad,
                              [reference_norm.weight, reference_norm.bias])
    got, got_grads = _grads(
        lambda t: networks.simam_batch_norm(t, 0.1, implementation, fused_norm.weight, fused_norm.bias,
                                            fused_norm.running_mean, fused_norm.running_var, 0.1, fused_norm.eps),
        x, grad, [fused_norm.weight, fused_norm.bias])
    out_tol, grad_tol = TOLERANCES["simam_bn"][dtype]
    stats_error = max(relative_error(getattr(fused_norm, key), getattr(reference_norm, key))
                      for key in ("running_mean", "running_var"))
    row = {"op": "simam_bn", "implementation": implementation, "dtype": str(dtype).replace("torch.", ""),
           "layout": "channels_last" if layout == CL else "contiguous", "shape": list(shape),
           "output_error": relative_error(got, want),
           "grad_error": max(relative_error(g, w) for g, w in zip(got_grads, want_grads)),
           "running_stats_error": stats_error, "tolerance": [out_tol, grad_tol], "dtype_kept": got.dtype == dtype,
           "layout_kept": got.is_contiguous(memory_format=layout)}
    # the running statistics come from SimAM's output rounded to the dtype (as the unfused pair rounds it)
    row["ok"] = (row["output_error"] <= out_tol and row["grad_error"] <= grad_tol and stats_error <= out_tol
                 and row["dtype_kept"] and row["layout_kept"])
    return row


def rounding_row(device: torch.device, dtype: torch.dtype, layout: torch.memory_format,
                 shape: tuple[int, ...]) -> dict:
    """Compiled SimAM + BN in fp16/bf16 rounds as the eager kernels do (the round trips through the low precision
    between SimAM and BN kept): the share of output and input-gradient elements that differ."""
    torch.manual_seed(0)
    norm = _random_norm(shape[1], device)
    x = (torch.randn(shape, device=device) * 3 + 1).to(dtype).to(memory_format=layout)
    grad = torch.randn(shape, device=device).to(dtype)
    results = []
    for implementation in ("eager", "compiled"):
        n = copy.deepcopy(norm)
        results.append(_grads(lambda t: networks.simam_batch_norm(t, 0.1, implementation, n.weight, n.bias,
                                                                  n.running_mean, n.running_var, 0.1, n.eps),
                              x, grad, []))
    (want, (want_grad,)), (got, (got_grad,)) = results
    row = {"op": "simam_bn rounding", "implementation": "compiled vs eager", "dtype": str(dtype).replace("torch.", ""),
           "layout": "channels_last" if layout == CL else "contiguous", "shape": list(shape),
           "output_differing_share": (got != want).double().mean().item(),
           "grad_differing_share": (got_grad != want_grad).double().mean().item(), "tolerance": ROUNDING_SHARE}
    row["ok"] = row["output_differing_share"] <= ROUNDING_SHARE and row["grad_differing_share"] <= ROUNDING_SHARE
    return row


def row_problems(row: dict) -> str:
    """What is out of tolerance in a row of simam_parity."""
    if "output_differing_share" in row:
        return (f"differing output {row['output_differing_share']:.3f}, input gradient "
                f"{row['grad_differing_share']:.3f} (tolerance {row['tolerance']})")
    out_tol, grad_tol = row["tolerance"]
    problems = [f"{name} {row[key]:.2e} > {tol:g}" for name, key, tol in (
        ("output", "output_error", out_tol), ("gradient", "grad_error", grad_tol),
        ("running statistics", "running_stats_error", out_tol)) if row.get(key, 0.0) > tol]
    problems += [f"{what} not kept" for what in ("dtype", "layout") if not row[f"{what}_kept"]]
    return ", ".join(problems)


def check_simam_parity(run: Run) -> dict:
    """SimAM's compiled kernels (Triton on CUDA) and eager kernels against the paper's formula at fp32, bf16 and
    fp16, contiguous and channels_last: SimAM alone and SimAM + BN fused (networks/simam_bn.py) against the formula
    then nn.BatchNorm2d, within the tolerances of tests/test_simam_fused.py and tests/test_simam_bn.py; and the
    compiled low-precision SimAM + BN rounding as the eager one. Starts from a reset of dynamo, and a variant past
    its recompile limit fails instead of running eager unnoticed."""
    device, size = run.device, run.sizes
    compiled = simam_kernels.compiled_available(device)
    dtypes = (torch.float32, torch.bfloat16, torch.float16)
    not_covered = {}
    if not compiled:
        not_covered["compiled"] = f"torch.compile cannot build SimAM's kernels on {device.type} here"
    elif set(size.simam_compiled_dtypes) != set(dtypes):
        not_covered["compiled bf16/fp16"] = ("CPU dry run: compiled in fp32 only (each kernel variant takes ~5 s to "
                                             "compile on a 2-core CPU; tests/test_simam_bn.py covers the rest)")
    torch._dynamo.reset()
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    strict = (torch._dynamo.config.patch(fail_on_recompile_limit_hit=True)
              if hasattr(torch._dynamo.config, "fail_on_recompile_limit_hit") else contextlib.nullcontext())
    rows = []
    with strict:
        for dtype in dtypes:
            for layout in (torch.contiguous_format, CL):
                implementations = ["eager"] + (["compiled"] if compiled and dtype in size.simam_compiled_dtypes else [])
                if dtype != torch.float32:
                    implementations.append("reference")  # the formula itself in low precision (fp32 statistics)
                for implementation in implementations:
                    rows.append(simam_row(device, implementation, dtype, layout, size.simam_shape))
                    if implementation != "reference":
                        rows.append(simam_bn_row(device, implementation, dtype, layout, size.simam_shape))
                if dtype != torch.float32 and "compiled" in implementations:
                    rows.append(rounding_row(device, dtype, layout, size.simam_shape))
        # odd sizes (as the tests'), eager: square crops never give them to the compiled kernels in training
        rows.append(simam_row(device, "eager", torch.float32, torch.contiguous_format, size.simam_odd_shape))
        rows.append(simam_bn_row(device, "eager", torch.float32, torch.contiguous_format, size.simam_odd_shape))
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs_before
    bad = [r for r in rows if not r["ok"]]
    worst = max((max(r["output_error"] / r["tolerance"][0], r["grad_error"] / r["tolerance"][1])
                 for r in rows if "output_error" in r), default=0.0)
    covered = sorted({f"{r['implementation']} {r['dtype']}" for r in rows if r["op"] == "simam"})
    summary = (f"{len(rows)} comparisons ({', '.join(covered)}; contiguous and channels_last; SimAM and SimAM + BN) "
               f"within tolerance, worst at {worst:.2f} of it; {graphs} graphs compiled" if not bad else
               f"{len(bad)} of {len(rows)} comparisons out of tolerance: " + "; ".join(
                   f"{r['op']} {r['implementation']} {r['dtype']} {r['layout']}: {row_problems(r)}" for r in bad[:4]))
    if not_covered:
        summary += "; not covered: " + ", ".join(not_covered)
    return verdict(not bad, summary, compiled_available=compiled, compiled_graphs=graphs, not_covered=not_covered,
                   worst_error_over_tolerance=worst, rows=rows)


# ---------------------------------------------------------------------------------------------------------
# 5. ddp_compiled_accum
# ---------------------------------------------------------------------------------------------------------

# In float64 the two computations agree to rounding whatever their order of operations: in fp32 a compiled step's
# gradients differ from eager's by up to ~5% in some conv layers at random init (cancellation; eager contiguous vs
# eager channels_last differ as much), which would hide a logic error of the size the check looks for.
DDP_TOLERANCE = 1e-6  # losses, weight updates (relative norm over all parameters) and buffers (max |diff| / max)


def update_error(models: dict[str, nn.Module], start: list[torch.Tensor]) -> float:
    """||update_ddp - update_eager|| / ||update_eager|| over all parameters (update: the weights minus ``start``)."""
    pairs = list(zip(models["ddp"].parameters(), models["eager"].parameters(), start))
    difference = torch.stack([(a.detach() - b.detach()).double().norm() for a, b, _ in pairs]).norm()
    update = torch.stack([(b.detach() - w).double().norm() for _, b, w in pairs]).norm()
    return (difference / update.clamp_min(1e-300)).item()


def check_ddp_compiled_accum(run: Run) -> dict:
    """A process group of one (NCCL; gloo on the CPU): ResNet-18+SimAM wrapped in DDP and compiled
    (``compile_model``), 2 steps of ``train_step`` with accum_steps=2 (DDP's no_sync on the first micro-batch) and
    the guard, against the same steps of the eager model without DDP, in float64: losses, weight updates and BN
    buffers agree to rounding, and the compiled graphs ran."""
    device, size = run.device, run.sizes
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.manual_seed(0)
    base = networks.create_net("resnet18", "simam", num_classes=10, simam_impl=size.simam_impl).double()
    models = {name: as_training_keeps(copy.deepcopy(base).to(device, memory_format=CL)) for name in ("ddp", "eager")}
    start = [p.detach().clone() for p in models["eager"].parameters()]
    batches = [(torch.randn(size.batch, 3, size.image, size.image, device=device, dtype=torch.float64)
                .contiguous(memory_format=CL), torch.randint(0, 10, (size.batch,), device=device)) for _ in range(2)]
    ctx = distributed.Context(device, rank=0, world_size=1)
    distributed.init_process_group(ctx, None, f"tcp://127.0.0.1:{distributed.free_port()}", timeout_min=2.0)
    try:
        backend = torch.distributed.get_backend()
        counting = CountingBackend(size.compile_backend)
        ddp = nn.parallel.DistributedDataParallel(models["ddp"], device_ids=[device.index] if run.cuda else None)
        steppers = {"ddp": compile_model(ddp, backend=counting), "eager": models["eager"]}
        losses: dict[str, list[float]] = {name: [] for name in models}
        for name, model in models.items():
            state = TrainState(model, build_optimizer(model, 0.01, 0.9, 1e-4), scheduler=None,
                               scaler=torch.amp.GradScaler(device.type, enabled=False), iterations_per_epoch=2)
            options = StepOptions(ctx if name == "ddp" else distributed.Context(device), memory_format=CL,
                                  accum_steps=2)
            guard = NonFiniteGuard(device, 2, model)
            for step, (images, target) in enumerate(batches):
                _, loss = train_step(steppers[name], images, target, state, options, guard, step)
                losses[name].append(loss.item())
        run.synchronize()
    finally:
        distributed.cleanup()
    buffers = max(relative_error(a, b) for a, b in zip(models["ddp"].buffers(), models["eager"].buffers()))
    loss_error = max(abs(a - b) / max(abs(b), 1e-300) for a, b in zip(losses["ddp"], losses["eager"]))
    errors = {"loss": loss_error, "weight_updates": update_error(models, start), "buffers": buffers}
    ok = (all(value <= DDP_TOLERANCE for value in errors.values()) and counting.calls > 0
          and all(math.isfinite(value) for values in losses.values() for value in values))
    summary = (f"DDP ({backend}, world of one) + torch.compile ({size.compile_backend}, {counting.calls} compiled "
               f"graph calls), accum_steps=2, 2 float64 steps from the eager ones: loss {loss_error:.1e}, weight "
               f"updates {errors['weight_updates']:.1e}, BN buffers {buffers:.1e} (tolerance {DDP_TOLERANCE:g})")
    if counting.calls == 0:
        summary += "; the compiled model never ran a compiled graph"
    figures = dict(backend=backend, compile_backend=size.compile_backend, compiled_graph_calls=counting.calls,
                   losses=losses, errors=errors, tolerance=DDP_TOLERANCE, batch=size.batch, image_size=size.image,
                   dtype="float64")
    if not run.cuda:
        figures["not_covered"] = {"nccl": "CPU dry run: gloo", "inductor": CPU_NOTES["compile"]}
    return verdict(ok, summary, **figures)


# ---------------------------------------------------------------------------------------------------------
# 6. uint8_pinned
# ---------------------------------------------------------------------------------------------------------

def check_uint8_pinned(run: Run) -> dict:
    """training.data's loaders over generated JPEGs: the uint8 pipeline's batches arrive pinned (pin_memory on CUDA,
    loader workers) and, normalised on the device, equal the PIL pipeline's batches within one level (training
    crops under the same seeds, and validation)."""
    from scripts.make_sample_data import make_dataset

    device, size = run.device, run.sizes
    root = os.path.join(run.workdir, "pipeline_data")
    make_dataset(root, seed=4, **size.data)
    crop = size.data_crop
    batches = {}
    for pipeline in ("uint8", "pil"):
        options = DataOptions(data=root, train_crop_size=crop, val_resize_size=round(crop * 8 / 7), val_crop_size=crop,
                              input_pipeline=pipeline)
        data = build_data(options, 1, 0, seed=0, batch_per_process=4, workers=size.data_workers, pin_memory=run.cuda)
        batches[pipeline] = [("train", b) for b in data.train_loader] + [("val", b) for b in data.val_loader]
        del data
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    pinned, layout_kept, dtypes, labels_equal = True, True, set(), True
    worst, mean = {"train": 0.0, "val": 0.0}, {"train": 0.0, "val": 0.0}  # per split, in levels of 0-255
    for (split, (images, target)), (_, (pil_images, pil_target)) in zip(batches["uint8"], batches["pil"]):
        dtypes.add(str(images.dtype).replace("torch.", ""))
        if run.cuda:
            pinned &= images.is_pinned() and target.is_pinned()
        on_device, on_device_target = to_device(images, target, device, CL)
        layout_kept &= on_device.is_contiguous(memory_format=CL) and on_device.device.type == device.type
        levels = ((on_device - pil_images.to(device)) * std * 255).abs()
        worst[split], mean[split] = max(worst[split], levels.max().item()), max(mean[split], levels.mean().item())
        labels_equal &= torch.equal(on_device_target.cpu(), pil_target)
    ok = (dtypes == {"uint8"} and pinned and layout_kept and max(worst.values()) <= 1.0 + 1e-3
          and max(mean.values()) < 0.5 and labels_equal)
    summary = (f"{len(batches['uint8'])} batches (train and val, {size.data_workers} worker(s)): uint8"
               + (", pinned" if run.cuda else "") + f", normalised on {device.type} (channels_last) within "
               f"{max(worst.values()):.2f} levels of the PIL pipeline (mean {max(mean.values()):.3f})")
    figures = dict(batches=len(batches["uint8"]), dtypes=sorted(dtypes), max_level_difference=worst,
                   mean_level_difference=mean, labels_equal=labels_equal, pinned=pinned if run.cuda else None,
                   channels_last_on_device=layout_kept, workers=size.data_workers, crop=crop)
    if not run.cuda:
        summary += "; pinned memory: CUDA only"
        figures["not_covered"] = {"pin_memory": "pinned host memory is for copies to a GPU (CUDA only)"}
    return verdict(ok, summary, **figures)


# ---------------------------------------------------------------------------------------------------------
# 7. quickstart
# ---------------------------------------------------------------------------------------------------------

def check_quickstart(run: Run) -> dict:
    """The quick start end to end on the device: main_imagenet.main with configs/quickstart.yaml on generated data
    and --amp auto --channels-last --compile (CUDA) --input-pipeline uint8 for 2 short epochs, then ``-e --resume``
    of the best checkpoint: the run folder's files and the evaluation JSON exist and top-1 is a number."""
    import main_imagenet
    from scripts.make_sample_data import make_dataset
    from training.config import parse_with_config

    size = run.sizes
    root, ckpt = os.path.join(run.workdir, "sample"), os.path.join(run.workdir, "ckpts")
    counts = make_dataset(root, seed=0, **size.quickstart_data)
    config = os.path.join(ROOT, "configs", "quickstart.yaml")
    common = [root, "--config", config, "--ckpt", ckpt, "--seed", "0",
              "--amp", "auto", "--channels-last", "--input-pipeline", "uint8", "--no-progress",
              *size.quickstart_argv]
    if run.cuda:
        common += ["--gpu", str(run.device.index or 0)]
    output = io.StringIO()
    started = time.monotonic()
    try:
        with contextlib.redirect_stdout(output):
            trained = main_imagenet.main(parse_with_config(main_imagenet.get_args_parser(), common))
            train_s = time.monotonic() - started
            run_dir = trained["run_dir"]
            best = os.path.join(run_dir, "model_best.pth.tar")
            evaluated = main_imagenet.main(parse_with_config(main_imagenet.get_args_parser(),
                                                             common + ["-e", "--resume", best]))
    except BaseException:
        sys.stdout.write(output.getvalue()[-3000:])
        raise
    eval_json = os.path.join(run_dir, "eval_model_best.json")
    saved = {}
    if os.path.isfile(eval_json):
        with open(eval_json) as f:
            saved = json.load(f)
    files = ["log.txt", "metrics.jsonl", "config.yaml", "checkpoint.pth.tar", "model_best.pth.tar",
             "eval_model_best.json"]
    missing = [name for name in files if not os.path.isfile(os.path.join(run_dir, name))]
    top1 = saved.get("top1")
    is_number = isinstance(top1, (int, float)) and math.isfinite(top1) and 0 <= top1 <= 100
    log = output.getvalue()
    precision = next((line.split("=> precision ", 1)[1].split(", SimAM kernels")[0] for line in log.splitlines()
                      if "=> precision " in line), "?")
    ok = not missing and is_number and saved.get("n_images") == counts["val"] and isinstance(
        trained.get("val_top1"), float)
    summary = (f"2 epochs ({precision}) in {train_s:.0f} s, then -e --resume model_best.pth.tar: top-1 {top1:.2f} on "
               f"{saved.get('n_images')} images (training's best {trained.get('best_acc'):.2f})"
               if ok else f"missing {missing} or top-1 {top1!r} is not a number (n_images {saved.get('n_images')})")
    figures = dict(precision=precision, train_seconds=train_s, images={"train": counts["train"], "val": counts["val"]},
                   val_top1=trained.get("val_top1"), best_acc=trained.get("best_acc"), eval_top1=top1,
                   eval_top5=saved.get("top5"), eval_json_keys=sorted(saved), missing=missing,
                   argv=" ".join({root: "DATA", ckpt: "CKPT", config: "configs/quickstart.yaml"}.get(a, a)
                                 for a in common) + "; then the same with -e --resume RUN/model_best.pth.tar",
                   eval_result_top1=evaluated.get("top1"))
    if not run.cuda:
        figures["not_covered"] = {"--compile": CPU_NOTES["quickstart_compile"], "--simam-impl": CPU_NOTES["simam_impl"]}
    return verdict(ok, summary, **figures)


# ---------------------------------------------------------------------------------------------------------
# 8. train_throughput, 9. inference
# ---------------------------------------------------------------------------------------------------------

def make_benches(run: Run, arch: str, batch: int, attentions: tuple[str, ...]) -> dict[str, TrainBench]:
    """The arch with each of ``attentions``, with the recommended settings (FAST_SETTINGS: --amp auto, channels_last,
    torch.compile, uint8 batches normalised on the device)."""
    args = argparse.Namespace(arch=arch, attention_type="simam", attention_param=None, num_classes=1000,
                              compile_backend=run.sizes.compile_backend, batch_size=batch,
                              image_size=run.sizes.bench_image)
    recommended = dict(amp=FAST_SETTINGS["amp"], channels_last=FAST_SETTINGS["channels_last"],
                       compile=FAST_SETTINGS["compile"], simam_impl=FAST_SETTINGS["simam_impl"], uint8=True)
    return {attention: TrainBench(args, run.device, **recommended, attention_type=attention)
            for attention in attentions}


def fitting_benches(run: Run, arch: str, warm_up: Callable[[TrainBench], None], attentions: tuple[str, ...]
                    ) -> tuple[dict[str, TrainBench], int]:
    """``make_benches`` at the largest batch that fits (the sizes' batch, halved on out-of-memory), warmed up."""
    batch = run.sizes.bench_batch
    while True:
        benches = None
        try:
            benches = make_benches(run, arch, batch, attentions)
            for bench in benches.values():
                warm_up(bench)
            run.synchronize()
            return benches, batch
        except Exception as error:
            if not (run.cuda and out_of_memory(error)) or batch == 1:
                raise
            del benches
            gc.collect()
            torch.cuda.empty_cache()
            batch //= 2
            print(f"    {arch}: out of memory, trying batch {batch}", flush=True)


def budgeted(run: Run, name: str, archs: tuple[str, ...], measure: Callable[[str], dict], estimate: float
             ) -> tuple[dict[str, dict], dict[str, str]]:
    """``measure(arch)`` for each arch that fits in the time left (keeping the later checks' reserve); the others
    are left out with the reason. The next arch is estimated at 1.5x the last one's time."""
    rows, left_out = {}, {}
    for arch in archs:
        left = run.time_left() - run.reserve_after(name)
        if left < estimate:
            left_out[arch] = (f"time budget: {max(left, 0):.0f} s left for it (after keeping the later checks' "
                              f"share), about {estimate:.0f} s needed; run --checks {name} on its own")
            continue
        started = time.monotonic()
        rows[arch] = measure(arch)
        estimate = 1.5 * (time.monotonic() - started)
    for arch in ARCHS:
        if arch not in archs:
            left_out[arch] = CPU_NOTES["bench_archs"] if not run.cuda else "--quick: resnet18 only"
    return rows, left_out


def check_train_throughput(run: Run) -> dict:
    """Training images/s (``--dummy``-style: one uint8 batch, the project's train_step) of ResNet-18, ResNet-50 and
    MobileNetV2 with and without SimAM at the largest batch <= 256 that fits, with the recommended settings
    (benchmark.py's TrainBench, timed in alternation), SimAM's overhead in % and each step's peak memory."""
    size = run.sizes
    set_tf32(True)
    torch.backends.cudnn.benchmark = True
    sync = partial(synchronize, run.device)

    def measure(arch: str) -> dict:
        def warm_up(bench: TrainBench) -> None:
            for _ in range(size.bench_warmup):
                bench.step()

        benches, batch = fitting_benches(run, arch, warm_up, ("simam", "none"))
        times = time_benches(benches, "step", size.bench_rounds, size.bench_per_round, sync)
        peaks = {name: peak_memory(bench) for name, bench in benches.items()}
        run.shared.setdefault("benches", {})[arch] = benches["simam"]  # for the inference check
        return {"batch_size": batch, "images_per_s": {name: batch / t for name, t in times.items()},
                "simam_overhead_pct": 100 * (times["simam"] / times["none"] - 1),
                "ran_compiled": {name: bench.settings["compile"] for name, bench in benches.items()},
                "peak_memory_mb": {name: peak[0] for name, peak in peaks.items()},
                "peak_memory_kind": peaks["simam"][1], "settings": benches["simam"].settings}

    archs = size.bench_archs[:1] if run.quick else size.bench_archs
    rows, left_out = budgeted(run, "train_throughput", archs, measure, size.arch_estimate)
    if not rows:
        return skip("no model fitted in the time budget: " + "; ".join(f"{a}: {r}" for a, r in left_out.items()),
                    left_out=left_out)
    eager = [arch for arch, row in rows.items() if not all(row["ran_compiled"].values())]
    summary = "; ".join(f"{arch} b{row['batch_size']}: {row['images_per_s']['simam']:.0f} img/s with SimAM, "
                        f"{row['images_per_s']['none']:.0f} without ({row['simam_overhead_pct']:+.1f}%)"
                        for arch, row in rows.items())
    if eager:
        summary += f"; timed steps ran eager, not compiled: {', '.join(eager)}"
    if left_out:
        summary += f"; left out: {', '.join(left_out)}"
    figures = dict(image_size=size.bench_image, warmup=size.bench_warmup, rounds=size.bench_rounds,
                   per_round=size.bench_per_round, compile_backend=size.compile_backend, archs=rows, left_out=left_out)
    if not run.cuda:
        figures["not_covered"] = {"inductor": CPU_NOTES["compile"]}
    return verdict(not eager, summary, **figures)


def check_inference(run: Run) -> dict:
    """Inference images/s of the same models with SimAM (compiled, --amp auto, channels_last, inference_mode), and
    the peak memory of one batch (torch.cuda.max_memory_allocated; CUDA only)."""
    size = run.sizes
    set_tf32(True)
    torch.backends.cudnn.benchmark = True
    sync = partial(synchronize, run.device)
    kept = run.shared.pop("benches", {})  # train_throughput's models (their training graphs compiled)

    def measure(arch: str) -> dict:
        def warm_up(bench: TrainBench) -> None:
            bench.model.eval()
            bench.state.optimizer.zero_grad(set_to_none=True)
            for _ in range(size.bench_warmup):
                bench.infer()

        if arch in kept:
            bench = kept.pop(arch)
            batch = bench.batch[0].shape[0]
            warm_up(bench)
        else:
            benches, batch = fitting_benches(run, arch, warm_up, ("simam",))
            bench = benches["simam"]
        seconds = time_benches({"simam": bench}, "infer", size.bench_rounds, size.bench_per_round, sync)["simam"]
        row = {"batch_size": batch, "images_per_s": batch / seconds, "ran_compiled": bench.settings["compile"],
               "settings": bench.settings}
        if run.cuda:
            run.synchronize()
            resident = torch.cuda.memory_allocated(run.device)
            torch.cuda.reset_peak_memory_stats(run.device)
            bench.infer()
            run.synchronize()
            peak = torch.cuda.max_memory_allocated(run.device)
            row.update(peak_memory_mb=peak / 2 ** 20, peak_above_resident_mb=(peak - resident) / 2 ** 20)
        return row

    archs = size.bench_archs[:1] if run.quick else size.bench_archs
    rows, left_out = budgeted(run, "inference", archs, measure, size.arch_estimate / 2)
    kept.clear()
    if not rows:
        return skip("no model fitted in the time budget: " + "; ".join(f"{a}: {r}" for a, r in left_out.items()),
                    left_out=left_out)
    eager = [arch for arch, row in rows.items() if not row["ran_compiled"]]
    summary = "; ".join(f"{arch}+SimAM b{row['batch_size']}: {row['images_per_s']:.0f} img/s"
                        + (f", peak {row['peak_memory_mb']:.0f} MB" if "peak_memory_mb" in row else "")
                        for arch, row in rows.items())
    if eager:
        summary += f"; timed calls ran eager, not compiled: {', '.join(eager)}"
    if left_out:
        summary += f"; left out: {', '.join(left_out)}"
    figures = dict(image_size=size.bench_image, archs=rows, left_out=left_out,
                   note="peak_memory_mb: all allocated memory at the peak (weights and momentum included); "
                        "peak_above_resident_mb: what the batch's inference adds")
    if not run.cuda:
        summary += "; peak memory: CUDA only"
        figures["not_covered"] = {"peak_memory": "torch.cuda.max_memory_allocated: CUDA only",
                                  "inductor": CPU_NOTES["compile"]}
    return verdict(not eager, summary, **figures)


# ---------------------------------------------------------------------------------------------------------
# 10. input_pipeline
# ---------------------------------------------------------------------------------------------------------

def check_input_pipeline(run: Run) -> dict:
    """Images/s of one CPU core in the input pipelines (scripts/_data_benchmark.py: ImageNet-like 500x375 JPEGs,
    224 px crops), and from it the CPU cores per GPU each model's training needs: its images/s (train_throughput)
    over the uint8 pipeline's images/s per core."""
    from scripts._data_benchmark import run_data_suite

    size = run.sizes
    suite = run_data_suite(image_count=size.pipeline_images, repeats=size.pipeline_repeats, workdir=run.workdir)
    per_core = suite["images_per_sec"]
    throughput = run.results.get("train_throughput", {}).get("figures", {}).get("archs", {})
    cores = {arch: {variant: {pipeline: images / per_core[pipeline]["train"] for pipeline in per_core}
                    for variant, images in row["images_per_s"].items()} for arch, row in throughput.items()}
    ok = all(per_core[p][s] > 0 for p in per_core for s in per_core[p])
    summary = (f"one core: uint8 {per_core['uint8']['train']:.0f} img/s, PIL {per_core['pil']['train']:.0f} img/s "
               f"(training crops)")
    if cores:
        summary += "; cores per GPU (uint8): " + ", ".join(
            f"{arch} {c['simam']['uint8']:.3g}" for arch, c in cores.items())
    else:
        summary += "; cores per GPU: needs train_throughput's figures (not run)"
    figures = dict(images_per_s_per_core=per_core, speedup_uint8_over_pil=suite["speedup"],
                   cores_per_gpu=cores, settings=suite["settings"])
    if not run.cuda:
        figures["note"] = "CPU dry run: the training figures are resnet18's at 64 px on this CPU"
    return verdict(ok, summary, **figures)


# ---------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------

CHECKS: dict[str, Callable[[Run], dict]] = {
    "fp16_guard": check_fp16_guard,
    "no_host_sync": check_no_host_sync,
    "mixer_channels_last": check_mixer_channels_last,
    "simam_parity": check_simam_parity,
    "ddp_compiled_accum": check_ddp_compiled_accum,
    "uint8_pinned": check_uint8_pinned,
    "quickstart": check_quickstart,
    "train_throughput": check_train_throughput,
    "inference": check_inference,
    "input_pipeline": check_input_pipeline,
}
CUDA_ONLY = ("no_host_sync",)  # SKIP on the CPU


class CheckTimeout(Exception):
    """A check ran past its time limit."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise ``CheckTimeout`` in the main thread after ``seconds`` (where SIGALRM exists)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise CheckTimeout(f"stopped after {seconds:.0f} s, the time limit of one check")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def isolated(run: Run):
    """Whatever a check changes globally (precision flags, cuDNN's modes, threads, a process group, the sync debug
    mode) is put back afterwards, and its memory released."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32, torch.get_num_threads())
    try:
        yield
    finally:
        if run.cuda:
            torch.cuda.set_sync_debug_mode(0)
        distributed.cleanup()
        (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.allow_tf32) = saved[:4]
        torch.set_num_threads(saved[4])
        gc.collect()
        if run.cuda:
            with contextlib.suppress(Exception):  # a device error is the check's to report
                torch.cuda.synchronize(run.device)
                torch.cuda.empty_cache()


def run_check(index: int, name: str, run: Run) -> dict:
    """One check, caught: an exception is a FAIL with its last line and where it was raised."""
    print(f"[{index}/{len(run.selected)}] {name} ...", flush=True)
    started = time.monotonic()
    try:
        with isolated(run), time_limit(run.sizes.check_limit):
            result = CHECKS[name](run)
    except Exception as error:
        traceback.print_exc()
        message = last_line(error)
        result = {"status": "FAIL", "summary": f"raised {message}", "figures": {},
                  "error": message, "where": where(error),
                  "traceback": traceback.format_exception(type(error), error, error.__traceback__)[-12:]}
    result["seconds"] = round(time.monotonic() - started, 1)
    print(f"{result['status']} {name} ({result['seconds']:.1f} s): {result['summary']}", flush=True)
    print("    " + json.dumps(result["figures"], default=str)[:1500], flush=True)
    return result


def markdown(report: dict) -> str:
    """The report's summary table."""
    counts = report["counts"]
    lines = [f"# GPU acceptance check: {report['device_name']} (`{report['device_tag']}`)", "",
             f"`{report['command']}`: torch {report['torch']}, {len(report['checks'])} checks: "
             f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped, in "
             f"{report['total_seconds']:.0f} s (time budget {report['time_budget']:.0f} s).", "",
             "| check | status | seconds | summary |", "|---|---|---:|---|"]
    for name, result in report["checks"].items():
        summary = result["summary"].replace("|", "\\|").replace("\n", " ")
        if result["status"] == "FAIL" and result.get("where"):
            summary += f" (at {result['where']})"
        lines.append(f"| {name} | {result['status']} | {result['seconds']:.1f} | {summary} |")
    lines += ["", f"Figures: `{report['json_name']}`. Run `python scripts/gpu_check.py --help` for what each check "
              "asserts."]
    return "\n".join(lines) + "\n"


def selected_checks(value: str | None) -> tuple[str, ...]:
    """The checks ``--checks`` names, in the table's order (later checks read earlier ones' figures)."""
    if value is None:
        return tuple(CHECKS)
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in CHECKS]
    if unknown or not names:
        raise UserError(f"unknown check {', '.join(map(repr, unknown)) or repr(value)}; "
                        f"valid: {', '.join(CHECKS)}")
    return tuple(name for name in CHECKS if name in names)


def get_args_parser() -> argparse.ArgumentParser:
    class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
        pass

    checks = "\n".join(f"  {name:<20} {' '.join((check.__doc__ or '').split())}" for name, check in CHECKS.items())
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=Formatter,
                                     epilog=f"checks (run in this order):\n{checks}")
    arg = parser.add_argument
    arg("--device", default="cuda", choices=("cuda", "cpu"),
        help="cuda: GPU 0 (the current device); cpu: the dry run at small sizes")
    arg("--output-dir", default=os.path.join("results", "benchmarks"),
        help="folder of gpu-check-<device>.json and .md (relative: to the repository)")
    arg("--checks", default=None, metavar="NAME,...", help="comma-separated checks to run (default: all)")
    arg("--quick", action="store_true", help="train_throughput and inference on resnet18 alone")
    arg("--time-budget", type=float, default=None, metavar="SECONDS",
        help="seconds for the whole run; train_throughput and inference leave out models that would not fit "
             f"(default: {SIZES['cuda'].time_budget:.0f} on cuda, {SIZES['cpu'].time_budget:.0f} on cpu)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the selected checks; write the JSON report and its markdown summary; 1 when a check failed."""
    args = get_args_parser().parse_args(argv)
    names = selected_checks(args.checks)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda but CUDA is not available; --device cpu runs the dry run")
        device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    sizes = SIZES[device.type]
    budget = args.time_budget if args.time_budget is not None else sizes.time_budget
    output_dir = args.output_dir if os.path.isabs(args.output_dir) else os.path.join(ROOT, args.output_dir)
    tag = device_tag(device)
    env = environment(device)
    versions = {"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None}
    print(f"gpu_check on {env['device_name']} ({tag}), torch {env['torch']}: {len(names)} checks, time budget "
          f"{budget:.0f} s", flush=True)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as workdir:
        run = Run(device, sizes, workdir, START + budget, args.quick, names, results)
        for index, name in enumerate(names, start=1):
            results[name] = run_check(index, name, run)
        run.shared.clear()
    counts = {status: sum(r["status"] == status for r in results.values()) for status in ("PASS", "FAIL", "SKIP")}
    command = "python scripts/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:])
    json_name = f"gpu-check-{tag}.json"
    report = {"device_tag": tag, **env, **versions, "command": command.strip(), "time_budget": budget,
              "total_seconds": round(time.monotonic() - START, 1), "counts": counts, "json_name": json_name,
              "checks": results}
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, json_name), "w") as f:
        f.write(json.dumps(report, indent=2, default=str) + "\n")
    with open(os.path.join(output_dir, f"gpu-check-{tag}.md"), "w") as f:
        f.write(markdown(report))
    print("\n" + markdown(report), flush=True)
    print(f"wrote {os.path.join(args.output_dir, json_name)} and its .md", flush=True)
    return 1 if counts["FAIL"] else 0


cli = make_cli(main)  # bad input: one line `error: ...`, exit status 2


if __name__ == "__main__":
    sys.exit(cli())
