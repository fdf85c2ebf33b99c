"""Datasets, samplers and loaders.

Training order and augmentation are functions of (seed, epoch, position) only: the sampler hands each
sample its own seed and the transform runs under it. A run stopped anywhere and resumed therefore sees
exactly the images and crops an uninterrupted run sees, whatever the number of workers.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterator

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info
from torchvision import datasets

from . import presets
from .errors import BadImageError, UserError


def load_rgb(path: str) -> Image.Image:
    """Decode an image file to RGB; a file that cannot be decoded raises ``BadImageError`` naming it."""
    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise BadImageError(f"cannot read image {path}: {error}") from None


def image_folder(data: str, split: str, transform) -> datasets.ImageFolder:
    """``DATA/split`` as an ImageFolder; a missing folder or a class folder without images is a ``UserError``."""
    root = os.path.join(data, split)
    if not os.path.isdir(data):
        raise UserError(f"data folder not found: {data}")
    if not os.path.isdir(root):
        raise UserError(f"{root} not found: DATA must hold train/ and val/, each with one sub-folder per class")
    if not any(entry.is_dir() for entry in os.scandir(root)):
        raise UserError(f"{root} has no class folders: expected {root}/<class>/<image>.JPEG")
    dataset = datasets.ImageFolder(root, transform=transform, loader=load_rgb, allow_empty=True)
    with_images = set(dataset.targets)
    empty = [name for index, name in enumerate(dataset.classes) if index not in with_images]
    if empty:
        raise UserError(f"class folder {os.path.join(root, empty[0])} has no images "
                        f"(extensions {', '.join(datasets.folder.IMG_EXTENSIONS)})")
    return dataset


class SyntheticImages(Dataset):
    """``--dummy``: random normalised images and labels, for throughput checks without data on disk."""

    def __init__(self, length: int, image_size: int, num_classes: int = 1000) -> None:
        self.length, self.image_size, self.num_classes = length, image_size, num_classes
        self.classes = [f"class{i:04d}" for i in range(num_classes)]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        return torch.randn(3, self.image_size, self.image_size), index % self.num_classes


class SeededSamples(Dataset):
    """Wraps a dataset so that an item ``(index, seed)`` is loaded with the torch RNG seeded by ``seed``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        if get_worker_info() is not None:  # a worker process owns its RNG
            torch.manual_seed(seed)
            return self.dataset[index]
        with torch.random.fork_rng(devices=[]):  # loading in the main process: leave its RNG alone
            torch.manual_seed(seed)
            return self.dataset[index]


class TrainSampler(Sampler):
    """Shuffles per epoch like ``DistributedSampler`` (padding to a multiple of the world size) and yields
    ``(index, per-sample seed)``; ``set_epoch(epoch, skip)`` starts the epoch after ``skip`` samples."""

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        self.length, self.num_replicas, self.rank, self.seed = length, num_replicas, rank, seed
        self.per_replica = math.ceil(length / num_replicas)
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return max(self.per_replica - self.skip, 0)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.length, generator=generator).tolist()
        total = self.per_replica * self.num_replicas
        order += (order * math.ceil(total / self.length))[: total - self.length]
        for position in range(self.rank + self.skip * self.num_replicas, total, self.num_replicas):
            yield order[position], sample_seed(self.seed, self.epoch, position)


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A distinct, reproducible seed for each (run seed, epoch, position in the epoch's order)."""
    return ((seed * 1_000_003 + epoch) * 100_000_007 + position) % (2 ** 63)


class EvalShard(Sampler):
    """Every ``num_replicas``-th image from ``rank`` on: each image is evaluated by exactly one process."""

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0) -> None:
        self.indices = range(rank, length, num_replicas)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


@dataclass
class Data:
    """What the rest of training needs to know about the data."""

    train_loader: DataLoader | None
    val_loader: DataLoader
    classes: list[str]


def build_data(args, world_size: int, rank: int, seed: int, batch_per_process: int, workers: int,
               pin_memory: bool) -> Data:
    """Datasets and loaders for ``args`` (ImageFolder under ``args.data``, or synthetic with ``--dummy``)."""
    train_tf = presets.train_transform(args.train_crop_size)
    val_tf = presets.eval_transform(args.val_resize_size, args.val_crop_size)
    if args.dummy:
        train_set = None if args.evaluate else SyntheticImages(args.dummy, args.train_crop_size)
        val_set = SyntheticImages(max(args.dummy // 25, 1), args.val_crop_size)
    else:  # main_imagenet.check_args has made sure DATA is given
        train_set = None if args.evaluate else image_folder(args.data, "train", train_tf)
        val_set = image_folder(args.data, "val", val_tf)
        if train_set is not None and train_set.classes != val_set.classes:
            only_train = sorted(set(train_set.classes) - set(val_set.classes))
            only_val = sorted(set(val_set.classes) - set(train_set.classes))
            raise UserError(f"train/ and val/ must have the same class folders: only in train/: {only_train[:5]}, "
                            f"only in val/: {only_val[:5]}")
    loader_options = dict(batch_size=batch_per_process, num_workers=workers, pin_memory=pin_memory)
    train_loader = None
    if train_set is not None:
        sampler = TrainSampler(len(train_set), world_size, rank, seed)
        train_loader = DataLoader(SeededSamples(train_set), sampler=sampler, **loader_options)
    val_loader = DataLoader(val_set, sampler=EvalShard(len(val_set), world_size, rank), **loader_options)
    return Data(train_loader, val_loader, list(val_set.classes))
