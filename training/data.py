"""Datasets, samplers and loaders.

Training order and augmentation are functions of (seed, epoch, position) only: the sampler hands each
sample its own seed and the transform runs under it. A run stopped anywhere and resumed therefore sees
exactly the images and crops an uninterrupted run sees, whatever the number of workers. With a training size
schedule (progressive resizing) the sampler also hands each sample its epoch's crop size: the sampler's items are
the one channel that reaches persistent workers.

DATA is an ImageNet-layout folder, or the same images as WebDataset tar shards (``scripts/make_shards.py``), read at
random with wids (``ShardImages``): item ``i`` of the shards is item ``i`` of the folder, so all of the above holds
for both (docs/shards.md).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import struct
from dataclasses import dataclass, field
from typing import Callable, Iterator
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate, get_worker_info
from torchvision import datasets

try:
    from torchvision.io import decode_jpeg  # deprecated since torchvision 0.29 (moving to TorchCodec)
except ImportError:  # a torchvision without it: load_uint8 decodes with PIL
    decode_jpeg = None

from . import presets
from .errors import BadImageError, ShardError, UserError
from .options import Options, user_errors
from .performance import INPUT_PIPELINES, to_device


def load_rgb(path: str) -> Image.Image:
    """Decode an image file to RGB; a file that cannot be decoded raises ``BadImageError`` naming it."""
    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise BadImageError(f"cannot read image {path}: {error}") from None


def load_uint8(path: str) -> Tensor:
    """Decode an image file to a uint8 RGB CHW tensor (a view of an HWC buffer): libjpeg-turbo through
    ``torchvision.io.decode_jpeg`` for RGB and grayscale JPEGs (the same pixels as PIL), ``load_rgb`` for anything
    else (other formats, CMYK JPEGs, files decode_jpeg rejects, which then fail with ``load_rgb``'s error)."""
    try:
        with open(path, "rb") as f:
            encoded = f.read()
    except OSError as error:
        raise BadImageError(f"cannot read image {path}: {error}") from None
    return decode_uint8(encoded, path)


def decode_rgb(encoded: bytes, name: str) -> Image.Image:
    """``load_rgb`` of an image file's bytes (a shard's ``.jpg``); ``name`` names it in ``BadImageError``."""
    try:
        return Image.open(io.BytesIO(encoded)).convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise BadImageError(f"cannot read image {name}: {error}") from None


def decode_uint8(encoded: bytes, name: str) -> Tensor:
    """``load_uint8`` of an image file's bytes: the same decoder, the same pixels."""
    if decode_jpeg is not None and encoded[:3] == b"\xff\xd8\xff":  # JPEG
        try:
            image = decode_jpeg(torch.frombuffer(bytearray(encoded), dtype=torch.uint8))
        except RuntimeError:
            image = None
        if image is not None and image.shape[0] in (1, 3):
            return image.expand(3, -1, -1)
    return torch.from_numpy(np.array(decode_rgb(encoded, name))).permute(2, 0, 1)


def image_loader(pipeline: str = "pil") -> Callable[[str], Image.Image | Tensor]:
    """The file loader of an input pipeline: ``load_rgb`` (PIL images) or ``load_uint8`` (uint8 tensors)."""
    presets.check_pipeline(pipeline)
    return load_uint8 if pipeline == "uint8" else load_rgb


class ImageFolder(datasets.ImageFolder):
    """torchvision's ImageFolder that also takes items ``(index, size)``: the transform then runs as
    ``transform(image, size)`` (``presets.TrainTransform``), for a training size schedule."""

    def __getitem__(self, item: int | tuple[int, int]):
        if not isinstance(item, tuple):
            return super().__getitem__(item)
        index, size = item
        path, target = self.samples[index]
        image = self.transform(self.loader(path), size)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target


def image_folder(data: str, split: str, transform, loader: Callable = load_rgb) -> ImageFolder:
    """``DATA/split`` as an ImageFolder; a missing folder or a class folder without images is a ``UserError``."""
    root = os.path.join(data, split)
    if not os.path.isdir(data):
        raise UserError(f"data folder not found: {data}")
    if not os.path.isdir(root):
        raise UserError(f"{root} not found: DATA must hold train/ and val/, each with one sub-folder per class")
    if not any(entry.is_dir() for entry in os.scandir(root)):
        raise UserError(f"{root} has no class folders: expected {root}/<class>/<image>.JPEG")
    dataset = ImageFolder(root, transform=transform, loader=loader, allow_empty=True)
    with_images = set(dataset.targets)
    empty = [name for index, name in enumerate(dataset.classes) if index not in with_images]
    if empty:
        raise UserError(f"class folder {os.path.join(root, empty[0])} has no images "
                        f"(extensions {', '.join(datasets.folder.IMG_EXTENSIONS)})")
    return dataset


# ---------------------------------------------------------------------------------------------------------
# ImageNet as WebDataset tar shards (scripts/make_shards.py), read at random with wids: docs/shards.md
# ---------------------------------------------------------------------------------------------------------

SHARD_INDEX = "shardindex.json"  # DATA/<split>/shardindex.json: wids' shard index (wids-shard-index-v1)
CLASSES_FILE = "classes.txt"  # DATA/classes.txt: the class folder names (wnids), one a line, in class-index order


def is_sharded(data: str | None) -> bool:
    """Whether ``data`` holds sharded splits (``DATA/train`` or ``DATA/val`` with a ``shardindex.json``)."""
    return data is not None and any(os.path.isfile(os.path.join(data, split, SHARD_INDEX))
                                    for split in ("train", "val"))


def sharded_split(path: str, split: str = "val") -> tuple[str, str] | None:
    """``(DATA, split)`` when ``path`` is a sharded dataset (``DATA/split/shardindex.json``) or one of its split
    folders (``path/shardindex.json``); None otherwise."""
    if os.path.isfile(os.path.join(path, SHARD_INDEX)):
        folder = os.path.abspath(path)
        return os.path.dirname(folder), os.path.basename(folder)
    if os.path.isfile(os.path.join(path, split, SHARD_INDEX)):
        return path, split
    return None


def class_list(path: str, what: str) -> list[str]:
    """The class names (wnids) of an ImageNet folder, in class-index order: its sorted class sub-folders (as
    ``ImageFolder`` reads them), or a sharded dataset's class list (it or a split of it). A missing folder or one
    without class folders is a ``UserError`` beginning with ``what``."""
    sharded = sharded_split(path)
    if sharded is not None:
        return list(read_shard_index(*sharded)["classes"])
    return sorted_subfolders(path, what)


def sorted_subfolders(path: str, what: str) -> list[str]:
    """The sub-folders of ``path``, sorted as ``ImageFolder`` sorts its classes; a missing folder or one without
    sub-folders is a ``UserError`` beginning with ``what``."""
    if not os.path.isdir(path):
        raise UserError(f"{what} {path}: folder not found")
    names = sorted(entry.name for entry in os.scandir(path) if entry.is_dir())
    if not names:
        raise UserError(f"{what} {path}: no class sub-folders (expected {path}/<class>/<image>)")
    return names


def _is_local(url: str) -> bool:
    return not url.startswith("pipe:") and urlparse(url).scheme == ""


def read_shard_index(data: str, split: str) -> dict:
    """``DATA/split/shardindex.json`` with each shard's url resolved (relative urls: beside the index), checked: a
    missing index or shard, or a local shard whose size differs from the index's, is a one-line ``ShardError``."""
    folder = os.path.join(data, split)
    path = os.path.join(folder, SHARD_INDEX)
    if not os.path.isfile(path):
        raise ShardError(f"{path} not found: a sharded DATA holds train/ and val/, each with {SHARD_INDEX} "
                         "(scripts/make_shards.py writes them)")
    try:
        with open(path) as f:
            index = json.load(f)
        shards = index["shardlist"]
        if index.get("wids_version") != 1 or not shards or not all("url" in s and "nsamples" in s for s in shards):
            raise ValueError("not a wids shard index with shards")
        if not isinstance(index["classes"], list):
            raise ValueError("no class list")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ShardError(f"{path} is damaged ({error}); rewrite it with scripts/make_shards.py") from None
    for shard in shards:
        url = shard["url"]
        if _is_local(url):
            url = shard["url"] = os.path.normpath(os.path.join(os.path.abspath(folder), url))
            if not os.path.isfile(url):
                raise ShardError(f"shard {url} is missing (listed in {path})")
            size = os.path.getsize(url)
            if "filesize" in shard and size != shard["filesize"]:
                raise ShardError(f"shard {url} is damaged: {size} bytes, {path} says {shard['filesize']}; "
                                 "rewrite it with scripts/make_shards.py")
    return {**index, "index_path": path}


class _ShardCache:
    """wids' shard cache (``LRUShards``) for ``ShardListDataset``, keeping every shard once opened: a local shard
    is memory-mapped where it lies (wids would copy it into its cache folder), a remote one (``https://``, ``s3://``,
    ``gs://``, ``file://``, ``pipe:``) is downloaded by wids into ``$WIDS_CACHE`` (default /tmp/_wids_cache) once
    per node and then mapped. The file is closed once mapped (no descriptor per shard). A shard that cannot be read,
    or holds another number of samples than the index says, is a ``ShardError`` naming it."""

    def __init__(self, lengths: dict[str, int], localname: Callable[[str], str]) -> None:
        self.lengths, self.localname, self.open = lengths, localname, {}

    def get_shard(self, url: str):
        shard = self.open.get(url)
        if shard is None:
            shard = self.open[url] = self._open(url)
        return shard

    def _open(self, url: str):
        from wids.wids import IndexedTarSamples
        from wids.wids_dl import download_and_open

        try:
            if _is_local(url):
                with open(url, "rb") as stream:
                    shard = IndexedTarSamples(path=url, stream=stream)
            else:
                with download_and_open(url, self.localname(url)) as stream:
                    shard = IndexedTarSamples(path=url, stream=stream)
        except (OSError, ValueError, AssertionError, IndexError, UnicodeDecodeError, struct.error) as error:
            raise ShardError(f"cannot read shard {url} ({type(error).__name__}: {error}); it is damaged or was not "
                             "written completely: rewrite it with scripts/make_shards.py") from None
        if len(shard) != self.lengths[url]:
            shard.close()
            raise ShardError(f"shard {url} is damaged: {len(shard)} samples, its index says {self.lengths[url]}; "
                             "rewrite it with scripts/make_shards.py")
        return _CompactShard.of(shard)

    def clear(self) -> None:
        for shard in self.open.values():
            shard.close()
        self.open.clear()


class _CompactShard:
    """A shard as wids indexed it (``IndexedTarSamples`` over its memory map), with wids' per-member index (Python
    objects, about 590 bytes an image) replaced by a numpy table of where each ``.jpg`` and ``.cls`` lies (about 50
    bytes an image): every loader worker keeps every shard it has read, ImageNet's 1.28M images then in about 65 MB
    instead of 0.75 GB. Items are wids' samples: ``{".jpg": BytesIO, ".cls": BytesIO, "__key__": key}``."""

    def __init__(self, shard, table: np.ndarray) -> None:
        self.shard, self.table, self.map = shard, table, shard.reader.mmapped_file

    @classmethod
    def of(cls, shard):
        """``shard`` compacted when it is a memory-mapped shard of ``.jpg`` + ``.cls`` samples, else as it is."""
        from wids.wids import splitname

        reader = getattr(shard, "reader", None)
        if not hasattr(reader, "by_index"):
            return shard
        rows = []
        for members in shard.samples:
            where = {}
            for member in members:
                name, offset, size = reader.by_index[member]
                where[splitname(name)[1]] = (offset + 512, size)
            if set(where) != {".jpg", ".cls"}:
                return shard
            rows.append((*where[".jpg"], *where[".cls"], reader.by_index[members[0]][1]))
        table = np.array(rows, dtype=np.int64).reshape(-1, 5)
        reader.by_name, reader.by_index, shard.samples = {}, [], []
        return cls(shard, table)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> dict:
        from wids.wids import splitname

        jpg, jpg_size, label, label_size, header = (int(value) for value in self.table[index])
        name = bytes(self.map[header:header + 100]).split(b"\0", 1)[0].decode("utf-8", "replace")
        return {".jpg": io.BytesIO(self.map[jpg:jpg + jpg_size]),
                ".cls": io.BytesIO(self.map[label:label + label_size]), "__key__": splitname(name)[0]}

    def close(self) -> None:
        self.shard.close()


class ShardImages(Dataset):
    """A split of a sharded dataset (``scripts/make_shards.py``), read at random with wids' ``ShardListDataset``:
    item ``i`` is the folder dataset's item ``i`` (the shards hold the images in ``ImageFolder``'s order), decoded
    by the pipeline's decoder (``decode_rgb`` for ``pil``, ``decode_uint8`` for ``uint8``) from the original bytes
    and transformed like ``ImageFolder``'s; an item ``(index, size)`` runs ``transform(image, size)``."""

    def __init__(self, data: str, split: str, transform=None, pipeline: str = "pil") -> None:
        presets.check_pipeline(pipeline)
        index = read_shard_index(data, split)
        self.root, self.transform, self.pipeline = os.path.join(data, split), transform, pipeline
        self.index_path, self.shards = index["index_path"], index["shardlist"]
        self.classes = list(index["classes"])
        self.resized = index.get("resized")  # {"max_side", "jpeg_quality"}: make_shards.py --max-side
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.length = sum(shard["nsamples"] for shard in self.shards)
        self._dataset = None  # opened in each process that reads (DataLoader workers included)

    def __len__(self) -> int:
        return self.length

    def __getstate__(self):
        return {**self.__dict__, "_dataset": None}

    def _wids(self):
        if self._dataset is None:
            from wids import ShardListDataset

            with contextlib.redirect_stderr(io.StringIO()):  # wids prints a summary line per dataset
                dataset = ShardListDataset(self.shards, transformations=[])
            dataset.cache = _ShardCache({s["url"]: s["nsamples"] for s in self.shards}, dataset.localname)
            dataset.check_cache_misses = lambda: None  # every shard stays open: no misses to warn of
            self._dataset = dataset
        return self._dataset

    def keys_and_targets(self) -> list[tuple[str, int]]:
        """Each image's key (``<wnid>/<position>_<file stem>``) and class index, in order, without decoding."""
        dataset = self._wids()
        rows = []
        for index in range(self.length):
            sample = dataset[index]
            try:
                rows.append((sample["__key__"], int(sample[".cls"].getvalue())))
            except (KeyError, ValueError) as error:
                raise ShardError(f"shard {sample['__shard__']} is damaged: sample {sample['__key__']} has no "
                                 f"readable .cls ({error})") from None
        return rows

    def __getitem__(self, item: int | tuple[int, int]):
        index, size = item if isinstance(item, tuple) else (item, None)
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} images")
        sample = self._wids()[index]
        name = f"{sample['__shard__']}:{sample['__key__']}"
        try:
            encoded, target = sample[".jpg"].getvalue(), int(sample[".cls"].getvalue())
        except (KeyError, ValueError) as error:
            raise ShardError(f"shard {sample['__shard__']} is damaged: sample {sample['__key__']} has no "
                             f"readable .jpg and .cls ({error})") from None
        image = (decode_uint8 if self.pipeline == "uint8" else decode_rgb)(encoded, name)
        if self.transform is not None:
            image = self.transform(image) if size is None else self.transform(image, size)
        return image, target


def shard_dataset(data: str, split: str, transform, pipeline: str = "pil") -> ShardImages:
    """``DATA/split`` of a sharded dataset as ``ShardImages`` (``image_folder``'s counterpart)."""
    if not os.path.isdir(data):
        raise UserError(f"data folder not found: {data}")
    return ShardImages(data, split, transform, pipeline)


class SyntheticImages(Dataset):
    """``--dummy``: random normalised images (random uint8 images with ``uint8``) and labels, for throughput
    checks without data on disk; an item ``(index, size)`` gives a ``size`` x ``size`` image (a size schedule)."""

    def __init__(self, length: int, image_size: int, num_classes: int = 1000, uint8: bool = False) -> None:
        self.length, self.image_size, self.num_classes, self.uint8 = length, image_size, num_classes, uint8
        self.classes = [f"class{i:04d}" for i in range(num_classes)]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, item: int | tuple[int, int]):
        index, size = item if isinstance(item, tuple) else (item, self.image_size)
        shape = (3, size, size)
        image = torch.randint(0, 256, shape, dtype=torch.uint8) if self.uint8 else torch.randn(shape)
        return image, index % self.num_classes


class SeededSamples(Dataset):
    """Wraps a dataset so that an item ``(index, seed)`` is loaded with the torch RNG seeded by ``seed``; an item
    ``(index, seed, size)`` loads the wrapped dataset's item ``(index, size)`` (``ImageFolder``, ``SyntheticImages``).

    With ``skip_bad_images`` an unreadable image is replaced by the next readable one (the batch keeps its
    size, so DDP processes stay in step) and items are ``(image, target, skipped)``, ``skipped`` naming the
    files passed over ('' when none).
    """

    def __init__(self, dataset: Dataset, skip_bad_images: bool = False) -> None:
        self.dataset, self.skip_bad_images = dataset, skip_bad_images

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int] | tuple[int, int, int]):
        index, seed, *size = item
        if get_worker_info() is not None:  # a worker process owns its RNG, and uses only the CPU's: seed that
            torch.default_generator.manual_seed(seed)  # (torch.manual_seed's other devices cost 0.1 ms a sample)
            return self._load(index, *size)
        with torch.random.fork_rng(devices=[]):  # loading in the main process: leave its RNG alone
            torch.manual_seed(seed)
            return self._load(index, *size)

    def _load(self, index: int, size: int | None = None):
        def item(index: int):
            return index if size is None else (index, size)

        if not self.skip_bad_images:
            return self.dataset[item(index)]
        skipped = []
        for attempt in range(min(len(self.dataset), 100)):
            try:
                image, target = self.dataset[item((index + attempt) % len(self.dataset))]
                return image, target, "\n".join(skipped)
            except BadImageError as error:
                skipped.append(str(error))
        raise BadImageError(f"{len(skipped)} images in a row cannot be read, the last: {skipped[-1]}")


class DropBadImages(Dataset):
    """``--skip-bad-images`` for validation: an unreadable image is left out (each image counts at most once);
    items are ``(image, target, '')`` or ``(None, None, message)``, batched by ``collate_readable``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            return (*self.dataset[index], "")
        except BadImageError as error:
            return None, None, str(error)


def collate_readable(items):
    """Batch the readable items of ``DropBadImages``; the third element lists what was left out."""
    readable = [item[:2] for item in items if item[0] is not None]
    skipped = "\n".join(item[2] for item in items if item[2])
    if not readable:
        return torch.empty(0), torch.empty(0, dtype=torch.long), [skipped]
    images, targets = default_collate(readable)
    return images, targets, [skipped]


def skipped_images(batch) -> list[str]:
    """The messages naming the images a batch passed over (``--skip-bad-images``); [] for plain batches."""
    if len(batch) < 3:
        return []
    return [line for entry in batch[2] for line in entry.splitlines() if line]


class TrainSampler(Sampler):
    """Shuffles per epoch like ``DistributedSampler`` (padding to a multiple of the world size) and yields
    ``(index, per-sample seed)``, or ``(index, per-sample seed, size_of_epoch(epoch))`` given a size schedule;
    ``set_epoch(epoch, skip)`` starts the epoch after ``skip`` samples."""

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 size_of_epoch: Callable[[int], int] | None = None) -> None:
        self.length, self.num_replicas, self.rank, self.seed = length, num_replicas, rank, seed
        self.size_of_epoch = size_of_epoch
        self.per_replica = math.ceil(length / num_replicas)
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return max(self.per_replica - self.skip, 0)

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.length, generator=generator).tolist()
        total = self.per_replica * self.num_replicas
        order += (order * math.ceil(total / self.length))[: total - self.length]
        size = () if self.size_of_epoch is None else (self.size_of_epoch(self.epoch),)
        for position in range(self.rank + self.skip * self.num_replicas, total, self.num_replicas):
            yield order[position], sample_seed(self.seed, self.epoch, position), *size


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


@dataclass(frozen=True)
class DataOptions(Options):
    """Where the images come from and how they are read and cropped (the input pipeline), with augmentation."""

    data: str | None = None
    dummy: int = 0
    workers: int = 4  # per node
    input_pipeline: str = "pil"  # one of INPUT_PIPELINES
    train_crop_size: int = 224
    val_resize_size: int = 256
    val_crop_size: int = 224
    train_size_schedule: str | None = None
    skip_bad_images: bool = False
    augment: presets.AugmentOptions = field(default_factory=presets.AugmentOptions)
    train: bool = True  # not a flag: False leaves out the training set (-e)
    whole_batches: bool = False  # not a flag: training batches all full (gradient accumulation)

    @classmethod
    def values_of(cls, args) -> dict:
        return {**super().values_of(args), "augment": presets.AugmentOptions.from_args(args)}

    def check(self) -> None:
        self.at_least_one("train_crop_size", "val_resize_size", "val_crop_size")
        self.not_negative("workers")
        if self.train_size_schedule:
            user_errors(presets.train_size_schedule, self.train_size_schedule)
        if self.data is None and not self.dummy:
            raise UserError("the data folder DIR is required (or --dummy for synthetic data); see --help")


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data and input pipeline")
    arg = group.add_argument
    arg("data", metavar="DIR", nargs="?", default=None,
        help="dataset folder with train/ and val/, one sub-folder per class, or the output of "
             "scripts/make_shards.py (tar shards; recognised by its shardindex.json) (not needed with --dummy)")
    arg("-j", "--workers", default=DataOptions.workers, type=int, metavar="N",
        help="data loading workers per node (divided among the node's processes)")
    arg("--dummy", nargs="?", type=int, const=1281167, default=DataOptions.dummy, metavar="N",
        help="synthetic data instead of DATA: N training images (without N: ImageNet's 1281167), N/25 validation")
    arg("--input-pipeline", default=DataOptions.input_pipeline, choices=INPUT_PIPELINES,
        help="pil: torchvision's PIL transforms to normalised floats (the release's); uint8: the same "
             "augmentation, faster, as uint8 batches normalised on the device")
    arg("--train-crop-size", default=DataOptions.train_crop_size, type=int, help="RandomResizedCrop size for training")
    arg("--val-resize-size", default=DataOptions.val_resize_size, type=int,
        help="validation: resize the shorter side to this")
    arg("--val-crop-size", default=DataOptions.val_crop_size, type=int, help="validation: centre crop size")
    arg("--train-size-schedule", default=None, metavar="START:END:FROM_EPOCH:TO_EPOCH",
        help="progressive resizing: training crops grow linearly from START px (before FROM_EPOCH) to END px "
             "(from TO_EPOCH on), in multiples of 32; replaces --train-crop-size")
    arg("--skip-bad-images", action="store_true",
        help="pass over images that cannot be read (training: the next readable image takes the place; "
             "validation: left out), naming them on stderr and in log.txt and counting them in metrics.jsonl; "
             "default: stop with an error naming the file")
    presets.add_options(parser)


@dataclass
class InputPipeline:
    """The input pipeline of a process: its loaders (files decoded and cropped in the loader workers) and the
    batches' last step on the device (``to_device``: uint8 batches are normalised there)."""

    train_loader: DataLoader | None
    val_loader: DataLoader
    classes: list[str]
    resized: dict | None = None  # shards of images resized by make_shards.py --max-side: its settings

    def train_epoch(self, epoch: int, skip_batches: int = 0) -> DataLoader:
        """The training batches of ``epoch`` after its first ``skip_batches`` (a resumed epoch)."""
        self.train_loader.sampler.set_epoch(epoch, skip=skip_batches * self.train_loader.batch_size)
        return self.train_loader

    def crop_size_of(self, epoch: int) -> int | None:
        """The training crop size of ``epoch`` under a size schedule (None without one)."""
        size_of_epoch = self.train_loader.sampler.size_of_epoch
        return None if size_of_epoch is None else size_of_epoch(epoch)

    to_device = staticmethod(to_device)


def build_data(options: DataOptions, world_size: int, rank: int, seed: int, batch_per_process: int, workers: int,
               pin_memory: bool) -> InputPipeline:
    """The input pipeline ``options`` describe (ImageFolder under ``options.data``, ``ShardImages`` when it holds
    ``scripts/make_shards.py``'s shards, or synthetic with ``dummy``), in
    the pipeline ``options.input_pipeline`` (``uint8`` gives uint8 image batches), with the augmentation of
    ``options.augment`` (``presets.TrainTransform``) and the crop sizes of ``options.train_size_schedule``
    (``presets.train_size_schedule``; ``train_crop_size`` without it)."""
    pipeline = options.input_pipeline
    train_tf = presets.TrainTransform(options.train_crop_size, pipeline, options.augment)
    size_spec = options.train_size_schedule
    size_of_epoch = presets.train_size_schedule(size_spec) if size_spec else None
    val_tf = presets.eval_transform(options.val_resize_size, options.val_crop_size, pipeline)
    loader = image_loader(pipeline)
    if options.dummy:
        uint8 = pipeline == "uint8"
        train_set = SyntheticImages(options.dummy, options.train_crop_size, uint8=uint8) if options.train else None
        val_set = SyntheticImages(max(options.dummy // 25, 1), options.val_crop_size, uint8=uint8)
    else:  # DataOptions.check has made sure DATA is given
        if is_sharded(options.data):  # scripts/make_shards.py's OUT: the same images, in the same order
            def dataset(split, transform):
                return shard_dataset(options.data, split, transform, pipeline)
        else:
            def dataset(split, transform):
                return image_folder(options.data, split, transform, loader)
        train_set = dataset("train", train_tf) if options.train else None
        val_set = dataset("val", val_tf)
        if train_set is not None and train_set.classes != val_set.classes:
            only_train = sorted(set(train_set.classes) - set(val_set.classes))
            only_val = sorted(set(val_set.classes) - set(train_set.classes))
            raise UserError(f"train/ and val/ must have the same class folders: only in train/: {only_train[:5]}, "
                            f"only in val/: {only_val[:5]}")
    loader_options = dict(batch_size=batch_per_process, num_workers=workers, pin_memory=pin_memory,
                          persistent_workers=workers > 0)
    skip_bad = options.skip_bad_images
    train_loader = None
    if train_set is not None:
        sampler = TrainSampler(len(train_set), world_size, rank, seed, size_of_epoch)
        # An incomplete last batch is left out when it would hold one image (BatchNorm stops: "more than 1 value
        # per channel"), and always under gradient accumulation, where it would make micro-batches of unequal size
        # (down to one image) and, under torch.compile, one more graph per odd size.
        remainder = sampler.per_replica % batch_per_process
        drop_last = remainder == 1 or (remainder > 0 and options.whole_batches)
        train_loader = DataLoader(SeededSamples(train_set, skip_bad), sampler=sampler, drop_last=drop_last,
                                  **loader_options)
    val_sampler = EvalShard(len(val_set), world_size, rank)
    if skip_bad:
        val_loader = DataLoader(DropBadImages(val_set), sampler=val_sampler, collate_fn=collate_readable,
                                **loader_options)
    else:
        val_loader = DataLoader(val_set, sampler=val_sampler, **loader_options)
    return InputPipeline(train_loader, val_loader, list(val_set.classes), getattr(val_set, "resized", None))


def resized_notice(data: str | None, resized: dict | None) -> str | None:
    """The log's line for shards written with ``make_shards.py --max-side`` (``resized``: its settings; None for
    any other data)."""
    if not resized:
        return None
    return (f"{data} holds images resized to a longer side of at most {resized['max_side']} px and re-encoded as "
            f"JPEG (quality {resized['jpeg_quality']}; scripts/make_shards.py --max-side): not the paper's protocol")
