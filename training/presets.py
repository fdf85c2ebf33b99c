"""The release's ImageNet transforms, at configurable sizes, and a faster pipeline with the same augmentation.

Two input pipelines, chosen by name (``PIPELINES``):

* ``pil``: the release's torchvision transforms on PIL images, to normalised float tensors (paper-faithful).
* ``uint8``: the same crops and flips, drawn from torch's RNG in the same order, computed on uint8 tensors
  (``data.load_uint8`` decodes JPEGs with ``torchvision.io.decode_jpeg``) and returned as contiguous uint8 CHW
  tensors; ``normalize_on_device`` turns a batch of them into the ``pil`` pipeline's floats on the device.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torchvision import transforms
from torchvision.transforms.v2 import functional as F2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PIPELINES = ("pil", "uint8")


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


def train_transform(crop_size: int = 224, pipeline: str = "pil") -> transforms.Compose | RandomResizedCropFlip:
    """RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3) + horizontal flip (+ normalise for ``pil``)."""
    check_pipeline(pipeline)
    if pipeline == "uint8":
        return RandomResizedCropFlip(crop_size)
    return transforms.Compose([
        transforms.RandomResizedCrop(crop_size),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def eval_transform(resize_size: int = 256, crop_size: int = 224,
                   pipeline: str = "pil") -> transforms.Compose | ResizeCenterCrop:
    """Resize the shorter side to ``resize_size``, centre crop ``crop_size`` (+ normalise for ``pil``)."""
    check_pipeline(pipeline)
    if pipeline == "uint8":
        return ResizeCenterCrop(resize_size, crop_size)
    return transforms.Compose([
        transforms.Resize(resize_size),
        transforms.CenterCrop(crop_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


@functools.cache
def _mean_std(device: torch.device) -> tuple[Tensor, Tensor]:
    """ImageNet mean and std as (1, 3, 1, 1) float32 tensors on ``device``, made once per device."""
    return (torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1),
            torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1))


def normalize_on_device(images: Tensor, memory_format: torch.memory_format = torch.contiguous_format,
                        dtype: torch.dtype = torch.float32) -> Tensor:
    """An (N, 3, H, W) uint8 batch, on any device, as ``ToTensor`` + ``Normalize(IMAGENET_MEAN, IMAGENET_STD)``
    would give it (the same float32 operations), in ``memory_format`` and ``dtype``."""
    mean, std = _mean_std(images.device)
    out = images.to(torch.float32, memory_format=memory_format).div_(255).sub_(mean).div_(std)
    return out if dtype == torch.float32 else out.to(dtype)
