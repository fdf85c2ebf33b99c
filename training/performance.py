"""The fast training path's pieces: mixed-precision choice, batches to the device, the recommended settings."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from .presets import PIPELINES as INPUT_PIPELINES
from .presets import normalize_on_device

__all__ = ["AMP_CHOICES", "FAST_SETTINGS", "INPUT_PIPELINES", "amp_dtype_for", "native_bf16", "to_device"]

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


def to_device(images: Tensor, target: Tensor, device: torch.device,
              memory_format: torch.memory_format = torch.contiguous_format) -> tuple[Tensor, Tensor]:
    """Move a batch to ``device`` without waiting for the copy; uint8 images (the uint8 input pipeline) are
    normalised there, in one operation for the whole batch."""
    target = target.to(device, non_blocking=True)
    if images.dtype == torch.uint8:
        return normalize_on_device(images.to(device, non_blocking=True), memory_format), target
    return images.to(device, non_blocking=True, memory_format=memory_format), target


def compile_model(model: nn.Module, backend: str | Callable = "inductor") -> nn.Module:
    """``torch.compile`` with static shapes: a smaller last batch, and each size of a ``--train-size-schedule``,
    is one more graph, compiled on its first use and reused after (shapes never become dynamic)."""
    return torch.compile(model, dynamic=False, backend=backend)
