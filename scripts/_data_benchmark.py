#!/usr/bin/env python
"""Images per second of one data-loading worker: torchvision's PIL pipeline vs the uint8 pipeline.

    python scripts/_data_benchmark.py

writes ImageNet-like JPEGs (500x375, quality 90, smooth colour fields plus texture and noise, about 100 KB
each) to a temporary folder and times, on one thread, load + transform of every image for the ``pil`` pipeline
(``load_rgb`` + RandomResizedCrop, flip, ToTensor, Normalize) and the ``uint8`` pipeline (``load_uint8`` + the
same crop and flip on uint8 tensors; normalisation happens later, on the device, per batch), for training and
evaluation. Rounds alternate between the pipelines and the median round is reported, so the ratio comes from
one run under the same machine load. Prints the result as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
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
                    transform = (presets.train_transform(crop, pipeline) if split == "train" else
                                 presets.eval_transform(resize, crop, pipeline) if split == "eval" else
                                 lambda image: image)
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
