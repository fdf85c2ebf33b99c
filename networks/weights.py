"""Reading checkpoint files safely and mapping other layouts' key names onto ours."""

from __future__ import annotations

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


def load_checkpoint_file(path: str | os.PathLike) -> object:
    """``torch.load(path, weights_only=True)`` on CPU, with one-line ``ValueError``s for unusable files.

    Only tensors and plain containers are accepted: a file that would run code when unpickled is refused
    (naming what it would import) and nothing in it is executed. A file that is not a torch file at all (a web
    page saved in place of a download, a text file) and a truncated or damaged one are told apart from that.
    """
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(512)
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
        return "its first bytes are neither a zip archive nor a pickle, the two formats torch.save writes"
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


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load the model weights from an official release file, one of ours, or a bare state dict.

    Uses ``torch.load(weights_only=True)``: tensors and plain containers only, nothing is executed.
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
