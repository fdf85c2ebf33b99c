"""The release's ImageNet transforms, at configurable sizes."""

from __future__ import annotations

from torchvision import transforms

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def train_transform(crop_size: int = 224) -> transforms.Compose:
    """RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3) + horizontal flip + normalise."""
    return transforms.Compose([
        transforms.RandomResizedCrop(crop_size),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def eval_transform(resize_size: int = 256, crop_size: int = 224) -> transforms.Compose:
    """Resize the shorter side to ``resize_size``, centre crop ``crop_size``, normalise."""
    return transforms.Compose([
        transforms.Resize(resize_size),
        transforms.CenterCrop(crop_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
