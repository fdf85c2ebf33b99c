"""Evaluation beyond the validation set: ImageNet-V2, ReaL, -A, -R, -Sketch and -C (``scripts/eval_variants.py``).

Each set is a list of ``(path, label)`` samples whose labels index the model's classes, read with the evaluation
transform of ``-e``. The traps are handled here, once:

- ImageNet-V2's class folders are class *indices* ``0`` ... ``999`` (in ImageNet's sorted-wnid order): the folder
  name is read as the label, never sorted as a string (``v2_samples``).
- ImageNet-A and -R hold 200 of the 1,000 classes: the logits are restricted to the classes present and the
  argmax (top-5) is taken among them (``present_classes``, ``RestrictedLogits``).
- ReaL's ``real.json`` follows the sorted validation *file names* (across all class folders) and leaves out the
  images whose list is empty (``real_labels``, ``real_order``, ``real_top1``).
- ImageNet-C's AlexNet errors are matched by corruption name; 15 corruptions make the mCE, the 4 extra ones are
  reported without a CE (``c_summary``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from .data import ShardImages, image_loader, sharded_split, sorted_subfolders
from .errors import UserError

SETS = ("val", "v2", "real", "a", "r", "sketch", "c")
SET_NAMES = {"val": "ImageNet val", "v2": "ImageNet-V2", "real": "ImageNet-ReaL", "a": "ImageNet-A",
             "r": "ImageNet-R", "sketch": "ImageNet-Sketch", "c": "ImageNet-C"}
MASKED_SETS = ("a", "r")  # 200-class subsets: logits restricted to the classes present

# ImageNet-C (Hendrycks & Dietterich 2019): AlexNet's top-1 error averaged over the 5 severities, by corruption.
ALEXNET_ERRORS = {
    "gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640,
    "defocus_blur": 0.819880, "glass_blur": 0.826268, "motion_blur": 0.785948, "zoom_blur": 0.798360,
    "snow": 0.866816, "frost": 0.826572, "fog": 0.819324, "brightness": 0.564592,
    "contrast": 0.853204, "elastic_transform": 0.646056, "pixelate": 0.717840, "jpeg_compression": 0.606500,
}
C_CORRUPTIONS = tuple(ALEXNET_ERRORS)  # the 15 of the mCE
C_EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")  # reported, not in the mCE
C_SEVERITIES = ("1", "2", "3", "4", "5")


def is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _images_in(folder: str) -> list[str]:
    """The image files below ``folder`` (recursively, sorted)."""
    found = []
    for parent, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()
        found += [os.path.join(parent, name) for name in sorted(files) if is_image(name)]
    return found


def _unknown_classes_error(what: str, root: str, unknown: str, classes: Sequence[str]) -> UserError:
    return UserError(f"{what} {root}: class folder {unknown!r} is not among the model's {len(classes)} classes "
                     f"(e.g. {', '.join(list(classes)[:2])})")


class ShardSamples(Sequence):
    """A split of a sharded dataset (``scripts/make_shards.py``'s OUT) as a set's samples: row ``i`` is ``(file
    stem, index of its wnid in classes)`` for the split's image ``i``, the image read from the shards
    (``LabeledImages``). The file stem is the one kept in the image's key (dots as ``_``), so ReaL's sorted file
    names order the rows as they order ImageNet's ``ILSVRC2012_val_NNNNNNNN.JPEG``."""

    def __init__(self, data: str, split: str, classes: Sequence[str], what: str = "data") -> None:
        self.data, self.split = data, split
        images = ShardImages(data, split)
        self.resized = images.resized  # make_shards.py --max-side's settings, or None
        index = {name: i for i, name in enumerate(classes)}
        unknown = [name for name in images.classes if name not in index]
        if unknown:
            raise _unknown_classes_error(what, os.path.join(data, split), unknown[0], classes)
        rows = images.keys_and_targets()
        self.names = [key.rsplit("/", 1)[-1].split("_", 1)[-1] for key, _ in rows]  # <wnid>/<position>_<stem>
        self.labels = [index[images.classes[target]] for _, target in rows]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return list(zip(self.names[index], self.labels[index]))
        return self.names[index], self.labels[index]


def wnid_samples(root: str, classes: Sequence[str], what: str = "data") -> list[tuple[str, int]] | ShardSamples:
    """``root/<wnid>/<image>`` as ``(path, index of wnid in classes)`` (a sharded dataset or split at ``root``:
    ``ShardSamples``, its ``val`` split for the dataset); a folder that is not one of ``classes`` is a
    ``UserError`` naming the first such folder."""
    sharded = sharded_split(root)
    if sharded is not None:
        return ShardSamples(*sharded, classes, what)
    index = {name: i for i, name in enumerate(classes)}
    folders = sorted_subfolders(root, what)
    unknown = [name for name in folders if name not in index]
    if unknown:
        raise _unknown_classes_error(what, root, unknown[0], classes)
    samples = [(path, index[name]) for name in folders for path in _images_in(os.path.join(root, name))]
    if not samples:
        raise UserError(f"{what} {root} holds no images (extensions {', '.join(IMG_EXTENSIONS)})")
    return samples


def v2_samples(root: str, num_classes: int) -> list[tuple[str, int]]:
    """ImageNet-V2: ``root/<class index>/<image>``; the label is the folder name read as an integer (``10`` is
    class 10, whatever the folders' string order)."""
    folders = sorted_subfolders(root, "ImageNet-V2")
    unknown = [name for name in folders if not (name.isdigit() and int(name) < num_classes)]
    if unknown:
        raise UserError(f"ImageNet-V2 {root}: class folder {unknown[0]!r} is not among the model's {num_classes} "
                        f"classes (ImageNet-V2's folders are class indices 0 ... {num_classes - 1})")
    samples = [(path, int(name)) for name in sorted(folders, key=int)
               for path in _images_in(os.path.join(root, name))]
    if not samples:
        raise UserError(f"ImageNet-V2 {root} holds no images")
    return samples


def c_layout(root: str) -> dict[str, list[str]]:
    """ImageNet-C's ``root/<corruption>/<severity>/<wnid>/...``: the severities of each corruption."""
    layout = {}
    for corruption in sorted_subfolders(root, "ImageNet-C"):
        severities = sorted((name for name in sorted_subfolders(os.path.join(root, corruption), "ImageNet-C")),
                            key=lambda name: (not name.isdigit(), int(name) if name.isdigit() else 0, name))
        bad = [name for name in severities if name not in C_SEVERITIES]
        if bad:
            raise UserError(f"ImageNet-C {os.path.join(root, corruption)}: severity folder {bad[0]!r} is not one "
                            f"of 1-5 (expected {root}/<corruption>/<severity>/<wnid>/<image>)")
        layout[corruption] = severities
    return layout


def present_classes(samples: Sequence[tuple[str, int]]) -> list[int]:
    """The model classes a set holds, in order: the columns its logits are restricted to."""
    return sorted({label for _, label in samples})


def restrict(logits: Tensor, classes: Sequence[int] | Tensor) -> Tensor:
    """The logits of ``classes`` only: argmax / top-k among them (ImageNet-A and -R). Column j is class
    ``classes[j]``."""
    index = torch.as_tensor(classes, dtype=torch.long, device=logits.device)
    return logits.index_select(1, index)


def relabel(samples: Sequence[tuple[str, int]], classes: Sequence[int]) -> list[tuple[str, int]]:
    """Labels as positions in ``classes`` (the columns of ``restrict``)."""
    position = {label: j for j, label in enumerate(classes)}
    return [(path, position[label]) for path, label in samples]


class RestrictedLogits(nn.Module):
    """A model whose logits are restricted to ``classes`` (``restrict``)."""

    def __init__(self, model: nn.Module, classes: Sequence[int]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("classes", torch.as_tensor(list(classes), dtype=torch.long), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images).index_select(1, self.classes.to(images.device))


class LabeledImages(Dataset):
    """``(transform(image), label)`` for a list of ``(path, label)`` samples (the image read by the pipeline's
    loader) or ``ShardSamples`` (read from the shards, decoded by the pipeline's decoder)."""

    def __init__(self, samples: Sequence[tuple[str, int]] | ShardSamples, transform: Callable,
                 pipeline: str = "pil") -> None:
        self.transform = transform
        if isinstance(samples, ShardSamples):
            self.samples, self.shards = samples, ShardImages(samples.data, samples.split, None, pipeline)
        else:
            self.samples, self.shards, self.loader = list(samples), None, image_loader(pipeline)
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        image = self.loader(path) if self.shards is None else self.shards[index][0]
        return self.transform(image), label


# ---------------------------------------------------------------------------------------------------------
# ReaL
# ---------------------------------------------------------------------------------------------------------

def real_labels(path: str, num_classes: int) -> list[list[int]]:
    """``real.json``: one list of class indices per validation image (sorted file names); checked."""
    try:
        with open(path, encoding="utf-8") as f:
            labels = json.load(f)
    except FileNotFoundError:
        raise UserError(f"ReaL labels not found: {path}") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UserError(f"ReaL labels {path} are not readable JSON ({type(error).__name__})") from None
    if not isinstance(labels, list) or not all(
            isinstance(entry, list) and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < num_classes
                                            for c in entry) for entry in labels):
        raise UserError(f"ReaL labels {path} must be a list of lists of class indices 0 ... {num_classes - 1}")
    return labels


def real_order(samples: Sequence[tuple[str, int]]) -> list[int]:
    """For each sample of the validation set, its position in ReaL's order: the sorted file names across all
    class folders (``ILSVRC2012_val_00000001.JPEG`` first)."""
    names = [os.path.basename(path) for path, _ in samples]
    if len(set(names)) != len(names):
        raise UserError("the validation folder holds two images of the same file name: ReaL's labels follow the "
                        "sorted file names")
    by_name = sorted(range(len(names)), key=lambda i: names[i])
    order = [0] * len(names)
    for position, i in enumerate(by_name):
        order[i] = position
    return order


def real_top1(predictions: Sequence[int], samples: Sequence[tuple[str, int]], labels: Sequence[Sequence[int]],
              source: str = "real.json") -> dict[str, float | int]:
    """ReaL top-1 (%): the share of the images with a non-empty label list whose top-1 prediction is in it.
    ``predictions[i]`` is the top-1 class of ``samples[i]`` (the validation set in its folders' order)."""
    if len(labels) != len(samples):
        raise UserError(f"{source} has {len(labels)} label lists but the validation folder {len(samples)} images")
    order = real_order(samples)
    scored = correct = 0
    for i, prediction in enumerate(predictions):
        entry = labels[order[i]]
        if entry:
            scored += 1
            correct += int(prediction) in entry
    return {"top1": 100.0 * correct / scored if scored else float("nan"), "n_images": scored}


# ---------------------------------------------------------------------------------------------------------
# ImageNet-C
# ---------------------------------------------------------------------------------------------------------

def c_summary(errors: dict[str, Sequence[float]]) -> dict:
    """``errors``: corruption name -> top-1 error (%) per severity. Returns the JSON's ``c`` entry: per corruption
    its errors and CE = 100 x mean error / AlexNet's (by name; None for a corruption without an AlexNet error or
    with fewer than 5 severities), mCE over the 15 (None unless all 15 are there) and the mean error over every
    corruption and severity given."""
    corruptions = {}
    for name, values in errors.items():
        values = [float(v) for v in values]
        mean = sum(values) / len(values)
        ce = 100.0 * (mean / 100.0) / ALEXNET_ERRORS[name] if name in ALEXNET_ERRORS and len(values) == 5 else None
        corruptions[name] = {"top1_error": values, "mean_error": mean, "ce": ce}
    ces = [corruptions[name]["ce"] for name in C_CORRUPTIONS if name in corruptions]
    complete = len(ces) == len(C_CORRUPTIONS) and None not in ces
    every = [v for entry in corruptions.values() for v in entry["top1_error"]]
    return {"corruptions": corruptions, "mce": sum(ces) / len(ces) if complete else None,
            "mean_error": sum(every) / len(every) if every else None,
            "missing": [name for name in C_CORRUPTIONS if name not in corruptions]}

