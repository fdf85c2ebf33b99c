#!/usr/bin/env python
"""Predictions of a trained network on your own images: the top-k classes of each, with probabilities.

    python scripts/predict.py --resume resnet50_simam.safetensors cat.jpg dog.jpg
    python scripts/predict.py --resume ckpts/imagenet-resnet18-simam-param0.1-seed0/model_best.pth.tar photos/ \\
        --topk 3 --csv predictions.csv
    python scripts/predict.py --resume model_best_in_100_epochs.pth.tar photos/ --classes-from DATA/val --json out.json

Each image gets the same evaluation transform as ``main_imagenet.py -e`` (training.presets.eval_transform at the
sizes the file records: a safetensors file's transform, our checkpoints' --val-resize-size/--val-crop-size, else
256/224), so the top-1 over a labelled folder is ``-e``'s. Folders are searched recursively for image files, in
sorted order.

Class names: for a 1,000-class model, torchvision's ImageNet category names; otherwise the class folder names the
file records. Wnids (class folder names) come from the file's record (our checkpoints and safetensors files); the
release's files record none: then they are empty unless --classes-from DIR names a folder with one sub-folder per
class (an ImageNet train/ or val/ folder), in sorted order as training reads them, or a sharded dataset
(scripts/make_shards.py's OUT), whose class list they are.

Without --csv or --json one line per image is printed. An image that cannot be decoded is named on stderr and
skipped; a missing file, an unusable checkpoint or a bad flag is one line ``error: ...`` and exit status 2.
The network comes from the file; -a, --attention_type and --attention_param override it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision.datasets.folder import IMG_EXTENSIONS  # noqa: E402
from tqdm import tqdm  # noqa: E402

import networks  # noqa: E402
from scripts._cli import add_network_arguments, make_cli  # noqa: E402
from training.data import class_list, load_rgb  # noqa: E402
from training.distributed import parse_gpus  # noqa: E402
from training.errors import BadImageError, UserError, one_line  # noqa: E402
from training.metrics import show_progress  # noqa: E402
from training.presets import eval_transform  # noqa: E402

IMAGENET_CLASSES = 1000


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line (``error: ...``, exit status 2) instead of usage + message
        raise UserError(message)


def get_args_parser() -> argparse.ArgumentParser:
    parser = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR",
                        help="image files, or folders searched recursively for images")
    parser.add_argument("--resume", required=True, metavar="CKPT",
                        help="weights: a .safetensors file, one of our checkpoints, the release's, or a bare state "
                             "dict (read without executing anything in it)")
    parser.add_argument("--topk", type=int, default=5, help="classes per image (default: 5)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--csv", metavar="OUT", default=None,
                        help="write one row per image: path, then index_k, wnid_k, name_k, prob_k for k = 1..topk")
    output.add_argument("--json", metavar="OUT", default=None, help="write the predictions as JSON")
    parser.add_argument("--classes-from", metavar="DIR", default=None,
                        help="wnids for a file that records no classes (the release's): DIR's class sub-folders, "
                             "sorted (an ImageNet train/ or val/ folder), or a sharded OUT's class list")
    parser.add_argument("-b", "--batch-size", type=int, default=32, help="images per forward (default: 32)")
    parser.add_argument("-j", "--workers", type=int, default=2, help="image loading processes (default: 2)")
    parser.add_argument("--gpu", default=None,
                        help="device: a GPU id, or cpu (default: GPU 0 if there is one, else the CPU)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (it is also off when not on a "
                                                                   "terminal)")
    add_network_arguments(parser)
    return parser


# ----------------------------------------------------------------------------------------------- inputs

def image_paths(sources: list[str]) -> list[str]:
    """The files given and the image files below the folders given (recursively, sorted); a missing path or a folder
    without images is a ``UserError``."""
    paths = []
    for source in sources:
        if os.path.isfile(source):
            paths.append(source)
        elif os.path.isdir(source):
            found = sorted(os.path.join(folder, name) for folder, _, names in os.walk(source) for name in names
                           if name.lower().endswith(IMG_EXTENSIONS))
            if not found:
                raise UserError(f"no image files in {source} (looked for {', '.join(IMG_EXTENSIONS)})")
            paths.extend(found)
        else:
            raise UserError(f"image not found: {source}")
    return paths


class Images(Dataset):
    """The images at ``paths`` as evaluation crops; an unreadable one gives ``(None, index, message)``."""

    def __init__(self, paths: list[str], transform) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            return self.transform(load_rgb(self.paths[index])), index, None
        except BadImageError as error:
            return None, index, one_line(error)


def collate(items):
    """A batch of the readable images: (images or None, their indices, messages of the unreadable ones)."""
    readable = [(image, index) for image, index, _ in items if image is not None]
    images = torch.stack([image for image, _ in readable]) if readable else None
    return images, [index for _, index in readable], [message for _, _, message in items if message is not None]


# ----------------------------------------------------------------------------------------------- classes

def class_names(loaded: networks.LoadedNetwork, classes_from: str | None) -> tuple[list[str], list[str]]:
    """(wnids, names), one per class: wnids from the file's record, else ``classes_from``'s folders, else empty;
    names from torchvision's ImageNet categories for 1,000 classes, else the wnids (class folder names)."""
    count = loaded.num_classes
    wnids = loaded.classes
    if classes_from is not None:
        folders = class_list(classes_from, "--classes-from")
        if len(folders) != count:
            raise UserError(f"--classes-from {classes_from} has {len(folders)} class folders; {loaded.path} has "
                            f"{count} classes")
        if wnids is not None and wnids != folders:
            raise UserError(f"--classes-from {classes_from}: its class folders differ from the ones {loaded.path} "
                            f"records (first ones: {folders[:3]} vs {wnids[:3]}); leave it out")
        wnids = folders
    wnids = list(wnids) if wnids is not None else [""] * count
    if count == IMAGENET_CLASSES:
        from torchvision.models import ResNet50_Weights

        names = list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])  # bundled with torchvision: no download
    else:
        names = wnids
    return wnids, names


# ----------------------------------------------------------------------------------------------- predictions

def predict(loaded: networks.LoadedNetwork, paths: list[str], topk: int, batch_size: int, workers: int,
            device: torch.device, progress: bool = True) -> tuple[list[dict], list[str]]:
    """Top-``topk`` (indices, probabilities) of every readable image, and the messages of the unreadable ones
    (also printed on stderr as they come)."""
    transform = eval_transform(loaded.transform.resize_size, loaded.transform.crop_size, mean=loaded.transform.mean,
                               std=loaded.transform.std, interpolation=loaded.transform.interpolation)
    loader = DataLoader(Images(paths, transform), batch_size=batch_size, num_workers=workers, collate_fn=collate)
    model = loaded.model.to(device).eval()
    results, skipped = [], []
    with torch.inference_mode():
        for images, indices, messages in tqdm(loader, desc="Predict", dynamic_ncols=True, unit="batch",
                                              disable=not show_progress(True, not progress)):
            for message in messages:
                print(f"warning: skipped {message}", file=sys.stderr, flush=True)
            skipped.extend(messages)
            if images is None:
                continue
            probs = model(images.to(device)).float().softmax(1)
            top = probs.topk(topk, dim=1)
            for index, values, classes in zip(indices, top.values.cpu().tolist(), top.indices.cpu().tolist()):
                results.append({"path": paths[index], "indices": classes, "probs": values})
    return results, skipped


def rows_of(results: list[dict], wnids: list[str], names: list[str]) -> list[dict]:
    """One record per image: path and, for k = 1..topk, index_k, wnid_k, name_k, prob_k."""
    rows = []
    for result in results:
        row: dict = {"path": result["path"]}
        for k, (index, prob) in enumerate(zip(result["indices"], result["probs"]), start=1):
            row.update({f"index_{k}": index, f"wnid_{k}": wnids[index], f"name_{k}": names[index], f"prob_{k}": prob})
        rows.append(row)
    return rows


def main(args: argparse.Namespace) -> list[dict]:
    """Predict and write or print; returns the rows. Bad input raises ``UserError``."""
    if min(args.topk, args.batch_size) < 1 or args.workers < 0:
        raise UserError("--topk and -b must be positive and -j not negative")
    devices = parse_gpus(args.gpu)
    if len(devices) != 1:
        raise UserError(f"--gpu {args.gpu}: predict runs on one device")
    paths = image_paths(args.images)
    if "SIMAM_IMPL" not in os.environ:  # plain PyTorch kernels (the compiled ones take half a minute to build)
        networks.set_simam_implementation("eager")
    try:
        loaded = networks.load_network(args.resume, args.arch, args.attention_type, args.attention_param)
    except ValueError as error:
        raise UserError(str(error)) from None
    wnids, names = class_names(loaded, args.classes_from)
    topk = min(args.topk, loaded.num_classes)
    results, skipped = predict(loaded, paths, topk, args.batch_size, args.workers, devices[0], not args.no_progress)
    rows = rows_of(results, wnids, names)
    where = f"{len(rows)} images" + (f" ({len(skipped)} unreadable, skipped)" if skipped else "")
    if args.csv:
        _make_parent(args.csv)
        with open(args.csv, "w", newline="") as f:
            fields = ["path"] + [f"{field}_{k}" for k in range(1, topk + 1)
                                 for field in ("index", "wnid", "name", "prob")]
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        print(f"=> {args.csv}: top-{topk} of {where} by {loaded.description}")
    elif args.json:
        _make_parent(args.json)
        with open(args.json, "w") as f:
            json.dump({"checkpoint": args.resume, "network": loaded.description, "arch": loaded.arch,
                       "attention_type": loaded.attention_type, "attention_param": loaded.attention_param,
                       "transform": loaded.transform.as_dict(), "topk": topk, "skipped": skipped,
                       "predictions": [{"path": row["path"], "top": [
                           {field: row[f"{field}_{k}"] for field in ("index", "wnid", "name", "prob")}
                           for k in range(1, topk + 1)]} for row in rows]}, f, indent=2)
        print(f"=> {args.json}: top-{topk} of {where} by {loaded.description}")
    else:
        for row in rows:
            shown = ", ".join(f"{row[f'name_{k}'] or row[f'index_{k}']} {100 * row[f'prob_{k}']:.1f}%"
                              for k in range(1, topk + 1))
            print(f"{row['path']}: {shown}")
    return rows


def _make_parent(path: str) -> None:
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)


cli = make_cli(main, get_args_parser)


if __name__ == "__main__":
    sys.exit(cli())
