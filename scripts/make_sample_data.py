#!/usr/bin/env python
"""Generate a small, learnable image-classification dataset in ImageNet's folder layout (no download).

    python scripts/make_sample_data.py data/sample --classes 10 --train-per-class 50 --val-per-class 10

writes ``OUT/train/<class>/*.JPEG`` and ``OUT/val/<class>/*.JPEG``. Each class is a family of striped
textures with its own stripe orientation and colour; position, phase, stripe width, brightness and noise vary
per image, so a network has to learn colour and orientation (which survive random crops and flips) to
classify. Class folders are named like ImageNet's (n00000000, n00000001, ...).
"""

from __future__ import annotations

import argparse
import colorsys
import math
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from scripts._cli import make_cli  # noqa: E402
from training.errors import UserError  # noqa: E402


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=add_help,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("out", metavar="OUT", nargs="?", default="data/sample", help="output folder")
    parser.add_argument("--classes", type=int, default=10, help="number of classes (at most 36)")
    parser.add_argument("--train-per-class", type=int, default=50, help="training images per class")
    parser.add_argument("--val-per-class", type=int, default=10, help="validation images per class")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    parser.add_argument("--seed", type=int, default=0, help="random seed (the same seed gives the same files)")
    return parser


def class_style(label: int, num_classes: int) -> tuple[float, np.ndarray]:
    """Stripe angle and RGB colour of a class: angles spread over 180 degrees, hues over the colour wheel."""
    angles = 6 if num_classes > 6 else num_classes
    angle = math.pi * (label % angles) / angles
    hue = (label * 0.61803398875) % 1.0  # golden-ratio steps keep neighbouring classes' hues apart
    colour = np.array(colorsys.hsv_to_rgb(hue, 0.85, 0.95))
    return angle, colour


def draw(label: int, num_classes: int, size: int, rng: np.random.Generator) -> Image.Image:
    """One image of class ``label``."""
    angle, colour = class_style(label, num_classes)
    angle += rng.normal(0.0, 0.08)
    period = rng.uniform(size / 10, size / 5)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    wave = np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period + rng.uniform(0, 2 * np.pi))
    stripes = (wave > 0).astype(np.float64)[..., None]
    background = rng.uniform(0.05, 0.35, size=3)
    image = stripes * colour * rng.uniform(0.7, 1.0) + (1 - stripes) * background
    image += rng.normal(0.0, 0.06, size=image.shape)
    return Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))


def make_dataset(out: str, classes: int = 4, train_per_class: int = 64, val_per_class: int = 16,
                 size: int = 64, quality: int = 90, seed: int = 0) -> dict[str, int]:
    """Write the dataset to ``out``; returns the number of images per split."""
    if not 2 <= classes <= 36:
        raise ValueError(f"--classes must be between 2 and 36, got {classes}")
    if min(train_per_class, val_per_class) < 1 or size < 8:
        raise ValueError("--train-per-class and --val-per-class must be at least 1 and --size at least 8")
    rng = np.random.default_rng(seed)
    counts = {}
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for label in range(classes):
            folder = os.path.join(out, split, f"n{label:08d}")
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                draw(label, classes, size, rng).save(os.path.join(folder, f"{split}_{label:02d}_{i:05d}.JPEG"),
                                                     quality=quality)
        counts[split] = classes * per_class
    return counts


def main(args: argparse.Namespace) -> dict[str, int]:
    """Write the dataset and say what was written; bad options or an unwritable folder raise ``UserError``."""
    try:
        counts = make_dataset(args.out, args.classes, args.train_per_class, args.val_per_class, args.size,
                              args.quality, args.seed)
    except (ValueError, OSError) as error:
        raise UserError(str(error)) from None
    print(f"wrote {counts['train']} training and {counts['val']} validation images of {args.classes} classes "
          f"({args.size}x{args.size} JPEG) to {args.out}")
    return counts


cli = make_cli(main, get_args_parser)  # bad input: one line `error: ...`, exit status 2


if __name__ == "__main__":
    sys.exit(cli())
