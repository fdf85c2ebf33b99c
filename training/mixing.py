"""Batch mixing (MixUp, CutMix) with draws that are a function of (seed, epoch, iteration, rank).

``BatchMixer`` wraps torchvision's v2 ``MixUp`` / ``CutMix`` (a ``RandomChoice`` of both when both are on). They
draw from torch's CPU generator only (a Beta sample through ``torch.distributions``, ``torch.randint`` for the
CutMix box, ``torch.multinomial`` for the choice), whatever the batch's device; the mixer runs them under a forked
CPU RNG seeded from (seed, epoch, iteration, rank), so a run resumed mid-epoch mixes exactly as an uninterrupted run
and the global RNG is left untouched. The mixing itself (``roll``, multiply-add, box paste) runs on the batch's
device.
"""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.transforms import v2

from .options import Options


@dataclass(frozen=True)
class MixOptions(Options):
    """MixUp / CutMix of the training batches (off by default)."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0

    def check(self) -> None:
        self.not_negative("mixup_alpha", "cutmix_alpha")


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("batch mixing (torchvision's names and meanings; off by default)")
    arg = group.add_argument
    arg("--mixup-alpha", default=MixOptions.mixup_alpha, type=float, help="MixUp with this Beta(alpha, alpha) (0: off)")
    arg("--cutmix-alpha", default=MixOptions.cutmix_alpha, type=float,
        help="CutMix with this Beta(alpha, alpha) (0: off); with --mixup-alpha, one of the two per batch")


def mixing_seed(seed: int, epoch: int, iteration: int, rank: int = 0) -> int:
    """A reproducible seed for the mixing draws of one batch of one process."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{iteration}:{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (2 ** 63)


class BatchMixer:
    """MixUp (``mixup_alpha`` > 0) and/or CutMix (``cutmix_alpha`` > 0), one of them per batch with equal
    probability when both are on. ``mixer(images, target, epoch, iteration, rank)`` takes a batch of floats on any
    device and integer labels (N,), and returns the mixed images (same dtype and memory format) and soft targets
    (N, num_classes) float32, for ``nn.CrossEntropyLoss`` (which takes probabilities, with label smoothing too).
    ``iteration`` is the batch's position in its epoch, counted from the epoch's start also after a resume."""

    def __init__(self, num_classes: int, mixup_alpha: float = MixOptions.mixup_alpha,
                 cutmix_alpha: float = MixOptions.cutmix_alpha, seed: int = 0) -> None:
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"mixing alphas must be >= 0, not mixup {mixup_alpha}, cutmix {cutmix_alpha}")
        mixers = []
        if mixup_alpha > 0:
            mixers.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        if cutmix_alpha > 0:
            mixers.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        if not mixers:
            raise ValueError("batch mixing needs mixup_alpha > 0 or cutmix_alpha > 0")
        self.num_classes, self.mixup_alpha, self.cutmix_alpha, self.seed = num_classes, mixup_alpha, cutmix_alpha, seed
        self.transform = mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)

    def __call__(self, images: Tensor, target: Tensor, epoch: int, iteration: int,
                 rank: int = 0) -> tuple[Tensor, Tensor]:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(mixing_seed(self.seed, epoch, iteration, rank))
            mixed, soft_target = self.transform(images, target)
        # roll() on CUDA writes a contiguous tensor: give a channels_last batch its layout back (one graph, no copy
        # in the model's first layer)
        return mixed.contiguous(memory_format=memory_format_of(images)), soft_target


def memory_format_of(images: Tensor) -> torch.memory_format:
    """channels_last for a 4-D batch laid out that way (and not also contiguous, as 1x1 images are), else
    contiguous."""
    if images.dim() == 4 and not images.is_contiguous() and images.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def dominant_label(soft_target: Tensor) -> Tensor:
    """The label with the largest weight in each row of a soft target (ties: the lower class index), to measure
    training top-1 under mixing."""
    return soft_target.argmax(dim=1)
