"""A trained network from its weights file, the one way every tool loads one: ``load_network``.

``scripts/export.py``, ``scripts/visualize_attention.py``, ``scripts/predict.py`` and ``hubconf.py`` call it. It reads
ours (a training checkpoint or a ``--save_weights`` file, ``.pth.tar`` or ``.safetensors``), the release's files and
bare state dicts, without executing anything in them; identifies the network (``identify_network``: given values,
then the file's record, then its key layout); builds it and loads the weights strictly (``load_strict``, whose
error names the keys that differ and the likely cause), and says how its inputs were evaluated
(``EvalTransform``). Also here: the sha256 manifests of ``checkpoints/`` (``manifest_entry``, ``check_manifest``) and
``weights_file``, which turns a path or a URL (downloaded once into torch.hub's cache) into a checked local file.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from .archs import ARCHS
from .attentions import ATTENTIONS, describe_attention
from .identify import NetworkSpec, classifier_classes, identify_network, likely_cause
from .weights import ema_state_dict_of, load_checkpoint_file, state_dict_of

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # training.presets' (tests/test_loading.py checks they agree)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EvalTransform:
    """How a network's inputs are prepared for evaluation (``training.presets.eval_transform``): resize the shorter
    side to ``resize_size`` (``interpolation``), centre crop ``crop_size``, scale to [0, 1], normalise."""

    resize_size: int = 256
    crop_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> EvalTransform:
        """From ``as_dict``'s form; missing fields take the defaults, a malformed one is a ``ValueError``."""
        try:
            transform = cls(int(record.get("resize_size", cls.resize_size)),
                            int(record.get("crop_size", cls.crop_size)),
                            tuple(float(v) for v in record.get("mean", IMAGENET_MEAN)),
                            tuple(float(v) for v in record.get("std", IMAGENET_STD)),
                            str(record.get("interpolation", cls.interpolation)))
        except (TypeError, ValueError):
            transform = None
        if transform is None or min(transform.resize_size, transform.crop_size) < 1 or not (
                len(transform.mean) == len(transform.std) == 3):
            raise ValueError(f"not an evaluation transform: {dict(record)!r}")
        return transform


def eval_transform_of(checkpoint: Any) -> EvalTransform:
    """The evaluation transform a loaded file records: a safetensors file's ``transform``, our checkpoints' recipe
    (``--val-resize-size``, ``--val-crop-size``), else the defaults (256, 224: the release's)."""
    record = checkpoint if isinstance(checkpoint, Mapping) else {}
    metadata = record.get("metadata") if isinstance(record.get("metadata"), Mapping) else {}
    if isinstance(metadata.get("transform"), Mapping):
        return EvalTransform.from_dict(metadata["transform"])
    args = record.get("args") if isinstance(record.get("args"), Mapping) else {}
    if args.get("val_resize_size") and args.get("val_crop_size"):
        return EvalTransform(int(args["val_resize_size"]), int(args["val_crop_size"]))
    return EvalTransform()


# ----------------------------------------------------------------------------------------------- strict loading

def _short(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: str, arch: str,
                attention_type: str, num_classes: int) -> None:
    """``model.load_state_dict(state_dict, strict=True)``; on a mismatch, a one-line ``ValueError`` listing the
    missing/unexpected keys and the likely cause (other arch, other attention or other class count)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    reshaped = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}" for k in expected
                if k in state_dict and state_dict[k].shape != expected[k].shape]
    if not (missing or unexpected or reshaped):
        model.load_state_dict(state_dict, strict=True)
        return
    problems = []
    if missing:
        problems.append(f"missing keys: {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_short(unexpected)}")
    if reshaped:
        problems.append(f"shape mismatch (checkpoint vs model): {_short(reshaped, 2)}")
    raise ValueError(f"{path} does not fit {arch} + {attention_type} with {num_classes} classes: "
                     + "; ".join(problems)
                     + f"; likely cause: {likely_cause(state_dict, arch, attention_type, num_classes)}")


# ----------------------------------------------------------------------------------------------- the network

@dataclass
class LoadedNetwork:
    """A network loaded from a file (eval mode), what it is, its classes and its evaluation transform."""

    model: nn.Module
    path: str
    spec: NetworkSpec
    num_classes: int
    classes: list[str] | None = None  # the recorded class folder names (wnids for ImageNet), when the file has them
    transform: EvalTransform = field(default_factory=EvalTransform)
    metadata: dict[str, Any] = field(default_factory=dict)  # a safetensors file's metadata ({} for torch files)

    @property
    def arch(self) -> str:
        return self.spec.arch

    @property
    def attention_type(self) -> str:
        return self.spec.attention_type

    @property
    def attention_param(self) -> float | None:
        return self.spec.attention_param

    @property
    def description(self) -> str:
        """'resnet50 + simam (e_lambda=0.1)', or 'resnet50' without attention."""
        if self.attention_type == "none":
            return self.arch
        return f"{self.arch} + {describe_attention(self.attention_type, self.attention_param)}"


def load_network(path: str | os.PathLike, arch: str | None = None, attention_type: str | None = None,
                 attention_param: float | None = None, num_classes: int | None = None,
                 ema: bool = False) -> LoadedNetwork:
    """Read a weights file (``weights_only`` torch files or safetensors: nothing is executed), identify its network,
    build it and load the weights strictly; the model is returned in eval mode on the CPU.

    ``arch``, ``attention_type`` and ``attention_param`` win over what the file says (``identify_network``).
    The class count is the classifier weight's, else ``num_classes``, the file's record or 1000; a ``num_classes``
    that contradicts the weights is an error. ``ema``: the file's EMA weights (``model_ema``) instead.

    Raises ``ValueError`` (one line) for a missing, unsafe, damaged or foreign file, unknown names, a network that
    cannot be told apart from another, and weights that do not fit.
    """
    path = os.fspath(path)
    for registry, name in ((ARCHS, arch), (ATTENTIONS, attention_type)):
        if name is not None:
            registry.get(name)  # ValueError naming the choices
    checkpoint = load_checkpoint_file(path)
    state_dict = ema_state_dict_of(checkpoint, path) if ema else state_dict_of(checkpoint, path)
    spec = identify_network(checkpoint, arch and arch.lower(), attention_type and attention_type.lower(),
                            attention_param, source=path)
    from_weights = classifier_classes(state_dict)
    if from_weights is not None and num_classes is not None and num_classes != from_weights:
        raise ValueError(f"{path} has {from_weights} classes but {num_classes} were asked for")
    record = checkpoint if isinstance(checkpoint, Mapping) else {}
    count = int(from_weights or num_classes or record.get("num_classes") or 1000)
    model = spec.create(count)
    load_strict(model, state_dict, path, spec.arch, spec.attention_type, count)
    classes = record.get("classes")
    if not (isinstance(classes, list) and len(classes) == count and all(isinstance(c, str) for c in classes)):
        classes = None
    metadata = dict(record["metadata"]) if isinstance(record.get("metadata"), Mapping) else {}
    return LoadedNetwork(model.eval(), path, spec, count, classes, eval_transform_of(checkpoint), metadata)


# ----------------------------------------------------------------------------------------------- manifests

MANIFEST = "manifest.csv"
# The repository's manifest: its rows with a 'url' check the files downloaded from those URLs (``weights_file``).
REPOSITORY_MANIFEST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "checkpoints",
                                   MANIFEST)


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(manifest: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a ``manifest.csv`` (columns file, arch, attention_type, attention_param, sha256 and, optionally,
    url; ``#`` lines are comments), values stripped."""
    with open(manifest, newline="") as f:
        rows = csv.DictReader(line for line in f if not line.lstrip().startswith("#"))
        return [{key: (value or "").strip() for key, value in row.items() if key} for row in rows]


def manifest_entry(path: str | os.PathLike) -> tuple[str, dict[str, str]] | None:
    """The row for ``path`` in the nearest ``manifest.csv`` of its folder or a folder above (columns file,
    arch, attention_type, attention_param, sha256; file relative to the manifest), as (manifest, row)."""
    target = os.path.realpath(path)
    folder = os.path.dirname(target)
    while True:
        manifest = os.path.join(folder, MANIFEST)
        if os.path.isfile(manifest):
            for row in read_manifest(manifest):
                listed = row.get("file", "")
                if listed and os.path.realpath(os.path.join(folder, listed)) == target:
                    return manifest, row
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def check_sha256(path: str | os.PathLike, expected: str, manifest: str) -> None:
    """A ``ValueError`` unless ``path``'s sha256 is ``expected`` (nothing to check when that is empty)."""
    expected = expected.strip().lower()
    if not expected:
        return
    actual = sha256_of(path)
    if actual != expected:
        raise ValueError(f"{path}: sha256 {actual} does not match {expected} listed in {manifest}; refusing "
                         "it (a damaged or different file: download it again or correct the manifest)")


def check_manifest(path: str | os.PathLike) -> dict[str, str]:
    """The manifest row that lists ``path`` ({} if none does: see ``manifest_entry``), after checking the sha256
    it gives, if any: a mismatch is a ``ValueError``."""
    entry = manifest_entry(path)
    if entry is None:
        return {}
    manifest, row = entry
    check_sha256(path, row.get("sha256", ""), manifest)
    return row


def is_url(source: str | os.PathLike) -> bool:
    return "://" in os.fspath(source)


def weights_file(source: str | os.PathLike, progress: bool = True, manifest: str | os.PathLike | None = None) -> str:
    """A local weights file for ``source``, a path or a URL, checked against the manifests' sha256.

    A path must exist; the nearest ``manifest.csv`` of its folder or above that lists it is checked
    (``check_manifest``). A URL is downloaded once into ``<torch.hub.get_dir()>/checkpoints/<file name>`` (as
    ``torch.hub.load_state_dict_from_url`` does; a name ending in ``-<8 or more hex digits>.<ext>`` is checked against
    that sha256 prefix while downloading) and checked against the row of ``manifest`` (default: the repository's
    ``checkpoints/manifest.csv``) whose ``url`` is the URL, when there is one with a sha256; a file that does not
    match is deleted. Raises ``ValueError`` (one line): a missing file, a failed download, a mismatch.
    """
    if not is_url(source):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise ValueError(f"weights file not found: {path}")
        check_manifest(path)
        return path
    url = os.fspath(source)
    from urllib.parse import urlparse

    name = os.path.basename(urlparse(url).path)
    if not name:
        raise ValueError(f"{url}: the URL names no file")
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        os.makedirs(folder, exist_ok=True)
        found = torch.hub.HASH_REGEX.search(name)
        prefix = found.group(1) if found and len(found.group(1)) >= 8 else None  # not '-eca.' of 'r18-eca.pth'
        try:
            torch.hub.download_url_to_file(url, path, hash_prefix=prefix, progress=progress)
        except (OSError, RuntimeError, ValueError) as error:  # URLError is an OSError; a hash mismatch RuntimeError
            raise ValueError(f"cannot download {url}: {str(error).strip().splitlines()[0][:200]}") from None
    manifest = os.fspath(manifest or REPOSITORY_MANIFEST)
    rows = [row for row in read_manifest(manifest) if row.get("url") == url] if os.path.isfile(manifest) else []
    try:
        for row in rows:
            check_sha256(path, row.get("sha256", ""), manifest)
    except ValueError:
        os.remove(path)  # the next call downloads it again
        raise
    return path
