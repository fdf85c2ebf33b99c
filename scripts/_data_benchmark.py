#!/usr/bin/env python
"""Images per second of one data-loading worker: torchvision's PIL pipeline vs the uint8 pipeline.

    python scripts/_data_benchmark.py

writes ImageNet-like JPEGs (500x375, quality 90, smooth colour fields plus texture and noise, about 100 KB
each) to a temporary folder and times, on one thread, load + transform of every image for the ``pil`` pipeline
(``load_rgb`` + RandomResizedCrop, flip, ToTensor, Normalize) and the ``uint8`` pipeline (``load_uint8`` + the
same crop and flip on uint8 tensors; normalisation happens later, on the device, per batch), for training and
evaluation. Rounds alternate between the pipelines and the median round is reported, so the ratio comes from
one run under the same machine load. Prints the result as JSON.

``run_shards_suite`` (``scripts/benchmark.py --suite data --shards``) times the same work reading the images from
an ImageNet-layout folder against reading them from its tar shards (``scripts/make_shards.py``, read at random with
wids), in a training epoch's random order, for both pipelines; ``read`` is the file bytes alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from functools import partial

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image, features

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from scripts._cli import make_cli  # noqa: E402
from scripts._timing import alternate  # noqa: E402
from training import data, presets  # noqa: E402

SPLITS = ("train", "eval", "decode")


def natural_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A photo-like RGB image: smooth colour gradients and blobs, finer texture mostly in brightness (as in
    photos, where chroma carries little detail), and sensor noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.empty((height, width, 3), np.float32)
    for channel in range(3):
        fx, fy, phase = rng.uniform(-1, 1, 3)
        image[..., channel] = 128 + 50 * np.sin(fx * x / 60 + fy * y / 45 + 6 * phase)
    for cell, amplitude, colour in ((24, 40, True), (6, 30, False), (2, 24, False)):  # colour blobs to texture
        coarse = rng.normal(128, 40, (height // cell + 2, width // cell + 2, 3 if colour else 1)).clip(0, 255)
        layer = Image.fromarray(coarse.astype(np.uint8).squeeze()).resize((width, height), Image.BICUBIC)
        image += (np.asarray(layer, np.float32).reshape(height, width, -1) - 128) * amplitude / 40
    image += rng.normal(0, 7, (height, width, 1)) + rng.normal(0, 2, image.shape)
    return Image.fromarray(image.clip(0, 255).astype(np.uint8))


def make_images(folder: str, count: int, size: tuple[int, int], quality: int, seed: int = 0) -> list[str]:
    """Write ``count`` JPEGs of ``size`` (width, height) to ``folder``; returns their paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        path = os.path.join(folder, f"image_{index:05d}.JPEG")
        natural_image(rng, *size).save(path, quality=quality)
        paths.append(path)
    return paths


def one_pass(paths: list[str], loader, transform, seeded: bool) -> None:
    """Load + transform every image of ``paths`` (each sample under its own torch seed when ``seeded``)."""
    for index, path in enumerate(paths):
        if seeded:  # as data.SeededSamples seeds a worker's RNG
            torch.default_generator.manual_seed(index)
        transform(loader(path))


def transform_of(split: str, pipeline: str, crop: int, resize: int):
    """The ``train`` or ``eval`` transform of ``pipeline``; None for the splits that time decoding or reading."""
    if split == "train":
        return presets.train_transform(crop, pipeline)
    if split == "eval":
        return presets.eval_transform(resize, crop, pipeline)
    return None


def run_data_suite(image_count: int = 200, image_size: tuple[int, int] = (500, 375), quality: int = 90,
                   crop: int = 224, resize: int = 256, repeats: int = 7, workdir: str | None = None) -> dict:
    """Median images/s of each pipeline and split over ``repeats`` interleaved rounds, and the speedups."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(dir=workdir) as folder:
            paths = make_images(folder, image_count, image_size, quality)
            kilobytes = statistics.mean(os.path.getsize(path) for path in paths) / 1000
            cases = {}
            for split in SPLITS:  # a split's pipelines side by side in every round
                for pipeline in presets.PIPELINES:
                    transform = transform_of(split, pipeline, crop, resize) or (lambda image: image)
                    cases[pipeline, split] = (data.image_loader(pipeline), transform, split == "train")
            for case in cases.values():  # warm-up: page cache, first calls
                one_pass(paths[:10], *case)
            seconds = alternate({name: partial(one_pass, paths, *case) for name, case in cases.items()}, repeats)
    finally:
        torch.set_num_threads(threads)
    median = {pipeline: {split: round(len(paths) / seconds[pipeline, split], 1) for split in SPLITS}
              for pipeline in presets.PIPELINES}
    return {
        "settings": {"image_count": image_count, "image_size": list(image_size), "quality": quality,
                     "mean_jpeg_kb": round(kilobytes, 1), "crop": crop, "resize": resize, "repeats": repeats,
                     "threads": 1, "torch": torch.__version__, "torchvision": torchvision.__version__,
                     "pillow": PIL.__version__, "pillow_libjpeg_turbo": features.version_feature("libjpeg_turbo")},
        "images_per_sec": median,
        "speedup": {split: round(median["uint8"][split] / median["pil"][split], 2) for split in SPLITS},
        "note": "decode: loading alone (PIL open + convert('RGB') vs decode_jpeg), the floor both pipelines share; "
                "uint8 excludes normalisation, which runs on the device per batch",
    }


def run_shards_suite(image_count: int = 200, image_size: tuple[int, int] = (500, 375), quality: int = 90,
                     crop: int = 224, resize: int = 256, repeats: int = 5, classes: int = 4, shard_size: int = 64,
                     workdir: str | None = None, cold: bool = True) -> dict:
    """Median images/s on one thread, folder against shards, per pipeline and split (``read``: the bytes alone),
    visiting the images in a random order as a training epoch does, with the files in the page cache (warm); with
    ``cold``, where this process may drop the page cache (root: /proc/sys/vm/drop_caches), also the median of 3
    passes each right after dropping it, on datasets made afresh (a shard is then opened and indexed on first use,
    as in a new loader worker)."""
    from scripts.make_shards import make_shards

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(dir=workdir) as root:
            folder, shards = os.path.join(root, "folder"), os.path.join(root, "shards")
            per_class = max(image_count // classes, 1)
            for label in range(classes):
                for split in ("train", "val"):
                    os.makedirs(os.path.join(folder, split, f"n{label:08d}"))
                make_images(os.path.join(folder, "train", f"n{label:08d}"), per_class, image_size, quality, label)
                make_images(os.path.join(folder, "val", f"n{label:08d}"), 1, image_size, quality, label)
            make_shards(folder, shards, shard_size=shard_size, progress=False)
            count = per_class * classes
            order = torch.randperm(count, generator=torch.Generator().manual_seed(0)).tolist()
            makers = {"folder": lambda pipeline, transform: data.image_folder(
                          folder, "train", transform, data.image_loader(pipeline)),
                      "shards": lambda pipeline, transform: data.shard_dataset(shards, "train", transform, pipeline)}
            cases = {}
            for pipeline in presets.PIPELINES:
                for split in ("read", "train", "eval"):
                    transform = transform_of(split, pipeline, crop, resize)
                    for source, make in makers.items():
                        if split == "read" and pipeline == "uint8":
                            continue  # the bytes are the same for both pipelines
                        cases[source, pipeline, split] = partial(_visit, make(pipeline, transform), order, split)
            for case in cases.values():  # warm-up: page cache, shards opened, first calls
                case()
            seconds = alternate(cases, repeats)
            cold_seconds, cold_note = {}, "not measured"
            if cold:
                try:
                    drop_page_cache()
                except OSError as error:
                    cold_note = f"not measured: cannot drop the page cache ({error})"
                else:
                    cold_note = "each pass right after dropping the page cache, datasets made afresh"
                    cold_cases = {}
                    for pipeline, split in (("pil", "read"), ("uint8", "train"), ("pil", "train")):
                        transform = transform_of(split, pipeline, crop, resize)
                        for source, make in makers.items():
                            cold_cases[source, pipeline, split] = partial(
                                _cold_pass, partial(make, pipeline, transform), order, split)
                    cold_seconds = {name: statistics.median(case() for _ in range(3))
                                    for name, case in cold_cases.items()}
            shard_bytes = sum(os.path.getsize(os.path.join(shards, "train", name))
                              for name in os.listdir(os.path.join(shards, "train")) if name.endswith(".tar"))
    finally:
        torch.set_num_threads(threads)
    rates = {f"{source}/{pipeline}/{split}": round(count / value, 1)
             for (source, pipeline, split), value in seconds.items()}
    cold_rates = {f"{source}/{pipeline}/{split}": round(count / value, 1)
                  for (source, pipeline, split), value in cold_seconds.items()}
    return {
        "settings": {"image_count": count, "classes": classes, "shard_size": shard_size,
                     "shards_mb": round(shard_bytes / 1e6, 1), "image_size": list(image_size), "quality": quality,
                     "crop": crop, "resize": resize, "repeats": repeats, "threads": 1, "order": "random",
                     "cache": "warm: the files just written, in the page cache"},
        "images_per_sec_per_core": rates,
        "shards_vs_folder": _ratios(rates),
        "cold": cold_note,
        "cold_images_per_sec_per_core": cold_rates,
        "cold_shards_vs_folder": _ratios(cold_rates),
        "note": "read: the file's bytes alone (open + read vs wids' shard lookup); train/eval: decode + transform "
                "as a loader worker does (uint8 excludes normalisation, which runs on the device)",
    }


def _ratios(rates: dict[str, float]) -> dict[str, float]:
    return {key.split("/", 1)[1]: round(rates[key] / rates["folder/" + key.split("/", 1)[1]], 3)
            for key in rates if key.startswith("shards/")}


def drop_page_cache() -> None:
    """Write back and drop the page cache (root only; an ``OSError`` otherwise)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("1\n")


def _cold_pass(make_dataset, order: list[int], split: str) -> float:
    """Seconds of one pass over a fresh dataset in ``order``, right after dropping the page cache."""
    dataset = make_dataset()
    drop_page_cache()
    start = time.perf_counter()
    _visit(dataset, order, split)
    return time.perf_counter() - start


def _visit(dataset, order: list[int], split: str) -> None:
    """One pass over ``dataset`` in ``order``: every item (each under its own seed, as data.SeededSamples seeds a
    worker), or for ``read`` the file bytes alone."""
    for position, index in enumerate(order):
        if split == "read":
            if isinstance(dataset, data.ShardImages):
                dataset._wids()[index][".jpg"].getvalue()
            else:
                with open(dataset.samples[index][0], "rb") as f:
                    f.read()
            continue
        torch.default_generator.manual_seed(position)
        dataset[index]


def get_args_parser() -> argparse.ArgumentParser:
    """No options; ``--help`` describes the suite."""
    return argparse.ArgumentParser(description=__doc__.split("\n\n")[0])


def main(args: argparse.Namespace) -> dict:
    """Run the suite and print its JSON."""
    result = run_data_suite()
    print(json.dumps(result, indent=2))
    return result


cli = make_cli(main, get_args_parser)  # bad input: one line `error: ...`, exit status 2


if __name__ == "__main__":
    sys.exit(cli())
