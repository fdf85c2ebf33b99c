"""Reading checkpoint files safely (torch files and safetensors), writing safetensors weights with their metadata,
and mapping other layouts' key names onto ours."""

from __future__ import annotations

import json
import os
import pickle
import re
from typing import Mapping

import torch

from .archs import ARCHS

StateDict = Mapping[str, torch.Tensor]


def strip_prefix(state_dict: StateDict, prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Drop ``prefix`` from every key that has it (the release saved DataParallel-wrapped models)."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state_dict.items()}


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6
PICKLE_PROTOCOL_2 = b"\x80\x02"  # torch.save's legacy format (a pickled magic number first)
SAFETENSORS_FORMAT = "simam-imagenet-weights/1"  # the 'format' of the metadata save_safetensors writes
# The metadata fields a safetensors file of ours hands up to the loaded record, as our checkpoints hold them (what
# ``identify_network`` and the class checks read); everything it records is under the record's 'metadata'.
SAFETENSORS_RECORD = ("arch", "attention_type", "attention_param", "num_classes", "classes")
MAX_SAFETENSORS_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header


def load_checkpoint_file(path: str | os.PathLike) -> object:
    """``torch.load(path, weights_only=True)`` on CPU, or a safetensors file, with one-line ``ValueError``s for
    unusable files.

    Only tensors and plain containers are accepted: a file that would run code when unpickled is refused
    (naming what it would import) and nothing in it is executed. A file that is not a torch file at all (a web
    page saved in place of a download, a text file) and a truncated or damaged one are told apart from that.
    A safetensors file (recognised by its content, whatever its name) is returned as ``read_safetensors`` gives it:
    ``{'state_dict': ..., 'metadata': ...}`` plus, for ours, the network it records (arch, attention, classes).
    """
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(512)
    if is_safetensors(head):
        return read_safetensors(path)
    if not head.startswith((ZIP_MAGIC, PICKLE_PROTOCOL_2)):
        raise ValueError(f"{path}: not a checkpoint: {what_it_looks_like(head)}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" not in str(error):
            raise ValueError(f"{path}: not a checkpoint: damaged ({_first_line(error)})") from None
        found = re.search(r"GLOBAL ([\w.]+)|[Uu]nsupported operand[^\n]*?(\d+)", str(error))
        what = f" (it would import {found.group(1)})" if found and found.group(1) else (
            f" (unsupported pickle operand {found.group(2)})" if found else "")
        raise ValueError(f"{path}: refused: the file holds Python objects that would run code when loaded{what}; "
                         "only tensors and plain containers are accepted; nothing was executed") from None
    except (KeyError, RuntimeError, EOFError, OSError, ValueError) as error:
        raise ValueError(f"{path}: not a checkpoint: truncated or damaged ({_damage(error)}); "
                         "download or copy it again") from None


def is_safetensors(head: bytes) -> bool:
    """Whether a file's first bytes are a safetensors header: its length (8 bytes, little-endian), then JSON."""
    return len(head) > 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= MAX_SAFETENSORS_HEADER


def read_safetensors(path: str | os.PathLike) -> dict:
    """A safetensors file as a checkpoint record: ``{'state_dict': tensors, 'metadata': {...}}`` (metadata values
    JSON-decoded where they are JSON), plus ``SAFETENSORS_RECORD``'s fields when the file is ours
    (``SAFETENSORS_FORMAT``). Nothing in the file is executed; a damaged file is a one-line ``ValueError``."""
    from safetensors import SafetensorError, safe_open  # here: importing networks stays quick

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        reason = _first_line(error).removeprefix("Error while deserializing header: ")
        raise ValueError(f"{path}: not a checkpoint: a truncated or damaged safetensors file ({reason[:120]}); "
                         "download or copy it again") from None
    if not tensors:
        raise ValueError(f"{path}: not a checkpoint: the safetensors file holds no tensors")
    decoded = {key: _decode(value) for key, value in metadata.items()}
    record: dict = {"state_dict": tensors, "metadata": decoded}
    if decoded.get("format") == SAFETENSORS_FORMAT:
        record.update({key: decoded[key] for key in SAFETENSORS_RECORD if key in decoded})
    return record


def _decode(value: str) -> object:
    try:
        return json.loads(value)
    except ValueError:
        return value  # another writer's plain string ('pt')


def save_safetensors(path: str | os.PathLike, state_dict: StateDict, metadata: Mapping[str, object]) -> None:
    """Write ``state_dict`` (on the CPU, each tensor its own contiguous copy: a model's buffers may share one
    storage, which safetensors refuses) to ``path`` as safetensors, with ``metadata`` JSON-encoded value by value and
    ``format`` set to ``SAFETENSORS_FORMAT``. Written to a temporary file that then replaces ``path``."""
    from safetensors.torch import save_file

    tensors = {key: value.detach().to("cpu", copy=True).contiguous() for key, value in state_dict.items()}
    encoded = {key: json.dumps(value) for key, value in {**metadata, "format": SAFETENSORS_FORMAT}.items()}
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
    try:
        save_file(tensors, tmp, metadata=encoded)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def what_it_looks_like(head: bytes) -> str:
    """A short description of a file that is not a torch file, from its first bytes."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<meta")) or b"<html" in text:
        return ("it is an HTML page: the download saved a web page instead of the file (Google Drive answers "
                "wget/curl with a warning page for large files; see checkpoints/README.md)")
    if not head:
        return "the file is empty"
    try:
        sample = head.decode("utf-8")
    except UnicodeDecodeError:
        return ("its first bytes are neither a zip archive nor a pickle (the two formats torch.save writes) nor a "
                "safetensors header")
    first = sample.strip().splitlines()[0][:40] if sample.strip() else ""
    return f"it is a text file (it starts with {first!r})"


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _damage(error: BaseException) -> str:
    """torch's reasons for an unreadable zip or pickle, in a few words."""
    message = str(error)
    if "central directory" in message:
        return "the end of the zip archive is missing"
    if isinstance(error, EOFError) or "EOF" in message or "file read failed" in message:
        return "the file ends early"
    if "PytorchStreamReader" in message:
        return "a record of the zip archive cannot be read"
    return f"{type(error).__name__}: {_first_line(error)[:120]}"


def state_dict_of(checkpoint: object, path: str | os.PathLike = "checkpoint") -> dict[str, torch.Tensor]:
    """The model weights in a loaded checkpoint (release dict, ours, or a bare state dict), without ``module.``."""
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint = checkpoint["state_dict"]
    if (not isinstance(checkpoint, Mapping) or not checkpoint
            or not all(torch.is_tensor(v) for v in checkpoint.values())):
        raise ValueError(f"{path}: not a checkpoint (expected a state dict or a dict with 'state_dict')")
    return strip_prefix(checkpoint)


def ema_state_dict_of(checkpoint: object, path: str | os.PathLike = "checkpoint") -> dict[str, torch.Tensor]:
    """The EMA weights of a checkpoint, ``checkpoint['model_ema']``, as the model's state dict (without DDP's and
    AveragedModel's ``module.`` prefixes and without ``n_averaged``); a file without them is a ``ValueError``."""
    ema = checkpoint.get("model_ema") if isinstance(checkpoint, Mapping) else None
    if not isinstance(ema, Mapping) or not ema:
        raise ValueError(f"{path} has no EMA weights ('model_ema'); leave out --eval-ema")
    state_dict = strip_prefix(strip_prefix(ema))
    state_dict.pop("n_averaged", None)
    if not state_dict or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise ValueError(f"{path}: its 'model_ema' is not a state dict")
    return state_dict


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load the model weights from an official release file, one of ours (a checkpoint or a safetensors file), or
    a bare state dict.

    Uses ``torch.load(weights_only=True)`` or safetensors: tensors and plain containers only, nothing is executed.
    Keys lose their ``module.`` prefix.
    """
    return state_dict_of(load_checkpoint_file(path), path)


def from_torchvision(arch: str, state_dict: StateDict) -> dict[str, torch.Tensor]:
    """Rename a torchvision model's state dict keys to ours (only MobileNetV2's classifier differs)."""
    renames = ARCHS.get(arch).torchvision_renames
    converted = {}
    for key, value in state_dict.items():
        for old, new in renames:
            if key.startswith(old):
                key = new + key[len(old):]
        converted[key] = value
    return converted
