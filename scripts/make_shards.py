#!/usr/bin/env python
"""Write an ImageNet-layout dataset as WebDataset tar shards, for sequential reads from network filesystems.

    python scripts/make_shards.py DATA OUT [--shard-size 1000] [-j 8] [--skip-bad-images] [--max-side N]

reads ``DATA/train/<class>/<image>`` and ``DATA/val/<class>/<image>`` in ``torchvision.datasets.ImageFolder``'s
order (sorted classes, sorted files within) and writes, per split, ``OUT/<split>/<split>-NNNNNN.tar`` holding
``--shard-size`` images each in that same order: ``<key>.jpg`` the file's original bytes (whatever its format),
``<key>.cls`` its class index as text; ``OUT/<split>/shardindex.json``, the shard index that ``wids`` reads
(``wids_version`` 1, ``shardlist`` of ``{url, nsamples, filesize, md5sum}``, plus the class list); and
``OUT/classes.txt``, the class folder names (wnids), one a line in class-index order. ``main_imagenet.py OUT``
then trains from the shards exactly as from ``DATA`` (docs/shards.md).

Every image is decoded once (PIL, as the training pipeline does) before it is written: an image that cannot be
decoded stops the run naming it, or with ``--skip-bad-images`` is left out and named. A shard is written to a
temporary file and renamed when complete, so a second run (after a failure, or to finish an interrupted one) skips
the shards already there and writes only the rest.

``--max-side N`` (FFCV's trick, off by default) stores every image whose longer side exceeds N resized to a longer
side of N and re-encoded as JPEG: smaller shards and faster decoding, but other pixels than the paper's, so results
trained or evaluated on such shards leave the paper's protocol; training says so in its log.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from scripts._cli import make_cli  # noqa: E402
from training.data import CLASSES_FILE, SHARD_INDEX, image_folder, load_rgb  # noqa: E402
from training.errors import BadImageError, UserError  # noqa: E402

SPLITS = ("train", "val")
SETTINGS_FILE = "make_shards.json"  # OUT/make_shards.json: the settings the shards were written with
KEY_STEM_CHARS = 60  # tar member names must stay under ustar's 100 characters (wids reads no long-name headers)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=add_help,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("data", metavar="DATA", help="dataset folder with train/ and val/, one sub-folder per class")
    parser.add_argument("out", metavar="OUT", help="output folder (OUT/train/, OUT/val/, OUT/classes.txt)")
    parser.add_argument("--shard-size", type=int, default=1000,
                        help="images per shard (ImageNet: about 110 MB a shard at 1000)")
    parser.add_argument("-j", "--workers", type=int, default=1, help="processes writing shards in parallel")
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="leave out images that cannot be decoded, naming them (default: stop at the first, "
                             "naming it); the shards then no longer match the folder image for image")
    parser.add_argument("--max-side", type=int, default=None, metavar="N",
                        help="store images whose longer side exceeds N resized to N (Lanczos) and re-encoded as JPEG, "
                             "as FFCV does: this changes the data and so leaves the paper's protocol (default: the "
                             "original bytes of every image)")
    parser.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality of the images --max-side resizes")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return parser


@dataclass(frozen=True)
class ShardJob:
    """One shard to write: ``samples`` (path, class index) in the folder's order, from position ``start``."""

    path: str
    start: int
    samples: tuple[tuple[str, int], ...]
    classes: tuple[str, ...]
    skip_bad_images: bool
    max_side: int | None = None
    jpeg_quality: int = 90


def sample_key(position: int, path: str, wnid: str) -> str:
    """The tar key of the image at ``position``: ``<wnid>/<position>_<file stem>``, unique and readable; dots
    become ``_`` (wids splits a member name at the first dot of its file name)."""
    stem = os.path.splitext(os.path.basename(path))[0].replace(".", "_")[:KEY_STEM_CHARS]
    return f"{wnid}/{position:08d}_{stem}"


def write_shard(job: ShardJob) -> dict:
    """Write one shard (to a temporary file, renamed when complete); returns its index entry and the images left
    out. A bad image raises ``BadImageError`` unless ``job.skip_bad_images``."""
    from webdataset import TarWriter

    skipped, count = [], 0
    partial = job.path + ".partial"
    try:
        with open(partial, "wb") as stream, TarWriter(stream, encoder=False, mtime=0) as writer:
            for offset, (path, target) in enumerate(job.samples):
                try:
                    image = load_rgb(path)  # decodes every pixel, as training will
                except BadImageError as error:
                    if not job.skip_bad_images:
                        raise
                    skipped.append(str(error))
                    continue
                if job.max_side is not None and max(image.size) > job.max_side:
                    encoded = resized_jpeg(image, job.max_side, job.jpeg_quality)
                else:
                    with open(path, "rb") as f:
                        encoded = f.read()
                writer.write({"__key__": sample_key(job.start + offset, path, job.classes[target]),
                              "jpg": encoded, "cls": str(target).encode()})
                count += 1
        os.replace(partial, job.path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return {**shard_entry(job.path, count), "skipped": skipped}


def resized_jpeg(image, max_side: int, quality: int) -> bytes:
    """``image`` resized to a longer side of ``max_side`` (aspect kept, Lanczos), as JPEG bytes."""
    from PIL import Image

    scale = max_side / max(image.size)
    size = tuple(max(1, round(side * scale)) for side in image.size)
    buffer = io.BytesIO()
    image.resize(size, Image.Resampling.LANCZOS).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def shard_entry(path: str, nsamples: int | None = None) -> dict:
    """The index entry of the complete shard ``path`` (samples counted by wids when ``nsamples`` is None)."""
    if nsamples is None:
        from wids.wids import compute_num_samples

        nsamples = compute_num_samples(path)
    md5 = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            md5.update(chunk)
    return {"url": os.path.basename(path), "nsamples": nsamples, "filesize": os.path.getsize(path),
            "md5sum": md5.hexdigest()}


def check_settings(out: str, settings: dict) -> None:
    """Record the settings in OUT; a second run with other settings into the same OUT is a ``UserError``."""
    path = os.path.join(out, SETTINGS_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            before = json.load(f)
        if before != settings:
            raise UserError(f"{out} was written with other settings ({before}, now {settings}): "
                            "use another OUT, or remove it")
        return
    os.makedirs(out, exist_ok=True)
    with open(path, "w") as f:
        json.dump(settings, f, indent=2)


def make_shards(data: str, out: str, shard_size: int = 1000, workers: int = 1, skip_bad_images: bool = False,
                progress: bool = True, max_side: int | None = None, jpeg_quality: int = 90) -> dict:
    """Write the shards, indexes and class list of ``data`` to ``out`` (with ``max_side``, larger images resized:
    ``--max-side``); returns per split the shards written and skipped as complete, the images written and the
    images left out."""
    from tqdm import tqdm

    if shard_size < 1 or workers < 1 or (max_side is not None and max_side < 1):
        raise UserError("--shard-size, --workers and --max-side must be at least 1")
    if not 1 <= jpeg_quality <= 95:
        raise UserError(f"--jpeg-quality must be within 1-95 (PIL's range), not {jpeg_quality}")
    resized = {"max_side": max_side, "jpeg_quality": jpeg_quality} if max_side is not None else None
    folders = {split: image_folder(data, split, None) for split in SPLITS}
    if folders["train"].classes != folders["val"].classes:
        raise UserError("train/ and val/ must have the same class folders")
    classes = tuple(folders["train"].classes)
    check_settings(out, {"shard_size": shard_size, "skip_bad_images": skip_bad_images,
                         "counts": {split: len(folder) for split, folder in folders.items()},
                         **({"resized": resized} if resized else {})})
    with open(os.path.join(out, CLASSES_FILE), "w") as f:
        f.write("".join(f"{name}\n" for name in classes))
    summary = {}
    for split, folder in folders.items():
        split_dir = os.path.join(out, split)
        os.makedirs(split_dir, exist_ok=True)
        samples = [(path, target) for path, target in folder.samples]
        jobs = [ShardJob(os.path.join(split_dir, f"{split}-{number:06d}.tar"), start,
                         tuple(samples[start:start + shard_size]), classes, skip_bad_images, max_side,
                         jpeg_quality)
                for number, start in enumerate(range(0, len(samples), shard_size))]
        entries: dict[str, dict] = {}
        pending = []
        for job in jobs:
            if os.path.isfile(job.path):  # complete: shards are renamed into place only when written whole
                entries[job.path] = shard_entry(job.path)
            else:
                pending.append(job)
        skipped: list[str] = []
        bar = tqdm(total=len(samples), initial=len(samples) - sum(len(job.samples) for job in pending),
                   desc=split, unit="img", disable=not progress, dynamic_ncols=True)
        try:
            if workers == 1:
                results = ((job, write_shard(job)) for job in pending)
            else:
                pool = ProcessPoolExecutor(workers)
                results = zip(pending, pool.map(write_shard, pending))
            for job, entry in results:
                skipped += entry.pop("skipped")
                entries[job.path] = entry
                bar.update(len(job.samples))
        except BadImageError as error:
            raise UserError(f"{error} (pass --skip-bad-images to leave such images out)") from None
        finally:
            bar.close()
            if workers > 1:
                pool.shutdown(cancel_futures=True)
        for message in skipped:
            print(f"=> skipped: {message}", file=sys.stderr)
        index = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": f"imagenet-{split}",
                 "classes": list(classes), "shardlist": [entries[job.path] for job in jobs],
                 **({"resized": resized} if resized else {})}
        temporary = os.path.join(split_dir, SHARD_INDEX + ".partial")
        with open(temporary, "w") as f:
            json.dump(index, f, indent=1)
        os.replace(temporary, os.path.join(split_dir, SHARD_INDEX))
        summary[split] = {"shards": len(jobs), "written": len(pending), "already_complete": len(jobs) - len(pending),
                          "images": sum(entry["nsamples"] for entry in entries.values()), "skipped": skipped}
    return summary


def main(args: argparse.Namespace) -> dict:
    summary = make_shards(args.data, args.out, args.shard_size, args.workers, args.skip_bad_images,
                          progress=not args.no_progress, max_side=args.max_side, jpeg_quality=args.jpeg_quality)
    for split, counts in summary.items():
        print(f"{split}: {counts['images']} images in {counts['shards']} shards ({counts['written']} written, "
              f"{counts['already_complete']} already complete, {len(counts['skipped'])} bad images left out) "
              f"in {os.path.join(args.out, split)}")
    return summary


cli = make_cli(main, get_args_parser)  # bad input: one line `error: ...`, exit status 2


if __name__ == "__main__":
    sys.exit(cli())
