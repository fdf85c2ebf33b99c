"""The release's ImageNet transforms, at configurable sizes, and a faster pipeline with the same augmentation.

Two input pipelines, chosen by name (``PIPELINES``):

* ``pil``: the release's torchvision transforms on PIL images, to normalised float tensors (paper-faithful).
* ``uint8``: the same crops and flips, drawn from torch's RNG in the same order, computed on uint8 tensors
  (``data.load_uint8`` decodes JPEGs with ``torchvision.io.decode_jpeg``) and returned as contiguous uint8 CHW
  tensors; ``normalize_on_device`` turns a batch of them into the ``pil`` pipeline's floats on the device.

Opt-in training augmentation, in both pipelines, after the crop and flip (whose draws stay the same): an augment
policy (``AUTO_AUGMENT_POLICIES``, torchvision's v2 transforms, on the PIL image or on the uint8 tensor) and random
erasing (on the normalised tensor with value 0 for ``pil``; with the ImageNet mean colour ``UINT8_MEAN`` on the uint8
tensor, which ``normalize_on_device`` turns into ~0, the same meaning). Every draw comes from torch's global RNG, so
under ``data.SeededSamples`` it is a function of the per-sample seed. ``train_size_schedule`` gives progressive
resizing: a training crop size per epoch.
"""

from __future__ import annotations

import argparse
import functools
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import torch
from torch import Tensor
from torchvision import transforms
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F2

from .errors import UserError
from .options import Options

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
UINT8_MEAN = tuple(round(mean * 255) for mean in IMAGENET_MEAN)  # (124, 116, 104): normalises to within 0.01 of 0
PIPELINES = ("pil", "uint8")
AUTO_AUGMENT_POLICIES = ("ra", "ta_wide", "augmix", "imagenet")
SIZE_MULTIPLE = 32


@dataclass(frozen=True)
class AugmentOptions(Options):
    """Opt-in training augmentation after the crop and flip, in both pipelines (``TrainTransform``)."""

    auto_augment: str | None = None  # one of AUTO_AUGMENT_POLICIES
    ra_magnitude: int = 9
    augmix_severity: int = 3
    random_erase: float = 0.0

    def check(self) -> None:
        self.at_least_one("augmix_severity")
        self.not_negative("ra_magnitude")
        if not 0.0 <= self.random_erase <= 1.0:
            raise UserError(f"--random-erase is a probability in [0, 1], got {self.random_erase}")


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("augmentation (torchvision's names and meanings; all off by default)")
    arg = group.add_argument
    arg("--auto-augment", default=None, choices=AUTO_AUGMENT_POLICIES,
        help="augmentation policy: RandAugment, TrivialAugmentWide, AugMix or AutoAugment's ImageNet policy")
    arg("--ra-magnitude", default=AugmentOptions.ra_magnitude, type=int, help="RandAugment magnitude")
    arg("--augmix-severity", default=AugmentOptions.augmix_severity, type=int, help="AugMix severity")
    arg("--random-erase", default=AugmentOptions.random_erase, type=float, metavar="P",
        help="RandomErasing probability")


def check_pipeline(pipeline: str) -> None:
    """Raise ``ValueError`` unless ``pipeline`` is one of ``PIPELINES``."""
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown input pipeline {pipeline!r}; valid choices: {', '.join(PIPELINES)}")


class RandomResizedCropFlip:
    """``RandomResizedCrop(size)`` then ``RandomHorizontalFlip()`` on a uint8 CHW tensor, to a contiguous uint8
    tensor: the box comes from torchvision's ``RandomResizedCrop.get_params`` and the flip from ``torch.rand(1)``,
    in that order, so a torch seed picks the same box and flip as the PIL transforms; bilinear with antialias."""

    def __init__(self, size: int, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> None:
        self.size, self.scale, self.ratio = size, scale, ratio

    def __call__(self, image: Tensor) -> Tensor:
        top, left, height, width = transforms.RandomResizedCrop.get_params(image, list(self.scale), list(self.ratio))
        image = F2.resized_crop(image, top, left, height, width, [self.size, self.size], antialias=True)
        if torch.rand(1) < 0.5:
            image = image.flip(-1)
        return image.contiguous()


class ResizeCenterCrop:
    """``Resize(resize_size)`` (shorter side, torchvision's rounding) then ``CenterCrop(crop_size)`` on a uint8 CHW
    tensor, to a contiguous uint8 tensor."""

    def __init__(self, resize_size: int, crop_size: int) -> None:
        self.resize_size, self.crop_size = resize_size, crop_size

    def __call__(self, image: Tensor) -> Tensor:
        image = F2.resize(image, [self.resize_size], antialias=True)
        return F2.center_crop(image, [self.crop_size, self.crop_size]).contiguous()


def augment_policy(name: str, ra_magnitude: int = AugmentOptions.ra_magnitude,
                   augmix_severity: int = AugmentOptions.augmix_severity) -> v2.Transform:
    """torchvision's v2 policy named ``name`` (``AUTO_AUGMENT_POLICIES``): RandAugment, TrivialAugmentWide, AugMix or
    AutoAugment's IMAGENET policy, with bilinear interpolation as in torchvision's classification references."""
    bilinear = v2.InterpolationMode.BILINEAR
    if name == "ra":
        if not 0 <= ra_magnitude <= 30:
            raise ValueError(f"RandAugment magnitude must be in 0..30, not {ra_magnitude}")
        return v2.RandAugment(magnitude=ra_magnitude, interpolation=bilinear)
    if name == "ta_wide":
        return v2.TrivialAugmentWide(interpolation=bilinear)
    if name == "augmix":
        if not 1 <= augmix_severity <= 10:
            raise ValueError(f"AugMix severity must be in 1..10, not {augmix_severity}")
        return v2.AugMix(severity=augmix_severity, interpolation=bilinear)
    if name == "imagenet":
        return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=bilinear)
    raise ValueError(f"unknown augment policy {name!r}; valid choices: {', '.join(AUTO_AUGMENT_POLICIES)}")


def _contiguous(image: Tensor) -> Tensor:
    return image.contiguous()


class TrainTransform:
    """The training transform: RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3) + horizontal flip, then the optional
    augment policy, (for ``pil``) ToTensor + Normalize, then optional random erasing with probability
    ``random_erase`` (``augment``). ``transform(image)`` crops ``crop_size``; ``transform(image, size)`` crops
    ``size`` (a size schedule), with the same draws."""

    def __init__(self, crop_size: int = 224, pipeline: str = "pil", augment: AugmentOptions = AugmentOptions()) -> None:
        check_pipeline(pipeline)
        erase = augment.random_erase
        if not 0.0 <= erase <= 1.0:
            raise ValueError(f"random erasing probability must be in [0, 1], not {erase}")
        self.crop_size, self.pipeline = crop_size, pipeline
        self.policy = None if augment.auto_augment is None else augment_policy(
            augment.auto_augment, augment.ra_magnitude, augment.augmix_severity)
        erase_value = UINT8_MEAN if pipeline == "uint8" else 0.0
        self.erasing = v2.RandomErasing(erase, value=erase_value) if erase > 0 else None
        self._at_size: dict[int, Callable] = {}

    def at_size(self, size: int) -> Callable:
        """The transform that crops ``size`` x ``size`` (made once per size)."""
        if size not in self._at_size:
            self._at_size[size] = self._make(size)
        return self._at_size[size]

    def _make(self, size: int) -> Callable:
        extras = [step for step in (self.policy, self.erasing) if step is not None]
        if self.pipeline == "uint8":
            if not extras:
                return RandomResizedCropFlip(size)
            return transforms.Compose([RandomResizedCropFlip(size), *extras, _contiguous])
        steps = [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()]
        if self.policy is not None:
            steps.append(self.policy)
        steps += [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        if self.erasing is not None:
            steps.append(self.erasing)
        return transforms.Compose(steps)

    def __call__(self, image, size: int | None = None) -> Tensor:
        return self.at_size(self.crop_size if size is None else size)(image)


def train_transform(crop_size: int = 224, pipeline: str = "pil", **augment) -> TrainTransform:
    """RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3) + horizontal flip (+ normalise for ``pil``), then the optional
    augment policy and random erasing (``TrainTransform``; ``augment``: ``AugmentOptions``' fields)."""
    return TrainTransform(crop_size, pipeline, AugmentOptions(**augment))


@dataclass(frozen=True)
class SizeSchedule:
    """Progressive resizing: the training crop size of an epoch (0-based). ``end`` from ``to_epoch`` on, else
    ``start`` up to ``from_epoch``; in between the linear interpolation, rounded to the nearest multiple of 32 (ties
    up, exact arithmetic; FFCV's ``np.round`` ties to even) and kept within [min(start, end), max(start, end)]."""

    start: int
    end: int
    from_epoch: int
    to_epoch: int

    def __call__(self, epoch: int) -> int:
        if epoch >= self.to_epoch:
            return self.end
        if epoch <= self.from_epoch:
            return self.start
        progress = Fraction(epoch - self.from_epoch, self.to_epoch - self.from_epoch)
        size = self.start + (self.end - self.start) * progress
        rounded = SIZE_MULTIPLE * math.floor(size / SIZE_MULTIPLE + Fraction(1, 2))
        return min(max(rounded, min(self.start, self.end)), max(self.start, self.end))


def train_size_schedule(spec: str) -> SizeSchedule:
    """Parse ``START:END:FROM_EPOCH:TO_EPOCH`` (e.g. ``160:192:0:16``) into the ``SizeSchedule`` epoch -> crop
    size; a malformed spec raises ``ValueError`` with a one-line message naming the expected form."""
    expected = ("expected START:END:FROM_EPOCH:TO_EPOCH (integers, sizes > 0, 0 <= FROM_EPOCH <= TO_EPOCH), "
                "e.g. 160:192:0:16")
    fields = spec.split(":")
    try:
        start, end, from_epoch, to_epoch = (int(field) for field in fields)
    except ValueError:
        raise ValueError(f"train size schedule {spec!r}: {expected}") from None
    if start <= 0 or end <= 0 or not 0 <= from_epoch <= to_epoch:
        raise ValueError(f"train size schedule {spec!r}: {expected}")
    return SizeSchedule(start, end, from_epoch, to_epoch)


def eval_transform(resize_size: int = 256, crop_size: int = 224, pipeline: str = "pil",
                   mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                   interpolation: str = "bilinear") -> transforms.Compose | ResizeCenterCrop:
    """Resize the shorter side to ``resize_size``, centre crop ``crop_size`` (+ normalise for ``pil``).

    ``mean``, ``std`` and ``interpolation`` (a ``torchvision.transforms.InterpolationMode`` value) are those a weights
    file may record (``networks.EvalTransform``); the ``uint8`` pipeline has the defaults only."""
    check_pipeline(pipeline)
    if pipeline == "uint8":
        if (tuple(mean), tuple(std), interpolation) != (IMAGENET_MEAN, IMAGENET_STD, "bilinear"):
            raise ValueError("the uint8 pipeline normalises with ImageNet's mean and std after a bilinear resize")
        return ResizeCenterCrop(resize_size, crop_size)
    return transforms.Compose([
        transforms.Resize(resize_size, interpolation=transforms.InterpolationMode(interpolation)),
        transforms.CenterCrop(crop_size),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


@functools.cache
def _mean_std(device: torch.device) -> tuple[Tensor, Tensor]:
    """ImageNet mean and std as (1, 3, 1, 1) float32 tensors on ``device``, made once per device."""
    return (torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1),
            torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1))


@functools.cache
def _scale_shift(device: torch.device) -> tuple[Tensor, Tensor]:
    """``ToTensor`` + ``Normalize`` as one affine map of the uint8 value x: x * scale + shift, per channel."""
    mean, std = (torch.tensor(values, dtype=torch.float64) for values in (IMAGENET_MEAN, IMAGENET_STD))
    return ((1 / (255 * std)).float().view(1, 3, 1, 1).to(device),
            (-mean / std).float().view(1, 3, 1, 1).to(device))


def normalize_on_device(images: Tensor, memory_format: torch.memory_format = torch.contiguous_format,
                        dtype: torch.dtype = torch.float32) -> Tensor:
    """An (N, 3, H, W) uint8 batch, on any device, as ``ToTensor`` + ``Normalize(IMAGENET_MEAN, IMAGENET_STD)``
    would give it (within 1e-6), in ``memory_format`` and ``dtype``: one pass, x * scale + shift computed in float32
    and written in ``dtype`` (on CUDA one kernel, reading the uint8 values as they are; on a CPU torch casts them
    first, a second pass)."""
    scale, shift = _scale_shift(images.device)
    out = torch.empty(images.shape, dtype=dtype, device=images.device, memory_format=memory_format)
    return torch.addcmul(shift, images, scale, out=out)
