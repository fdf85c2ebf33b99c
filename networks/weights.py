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


def load_checkpoint_file(path: str | os.PathLike) -> object:
    """``torch.load(path, weights_only=True)`` on CPU, with one-line ``ValueError``s for unusable files.

    Only tensors and plain containers are accepted: a file that would run code when unpickled is refused
    and nothing in it is executed.
    """
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):
            found = re.search(r"Unsupported (global|operand)[^.\n]*?: ([^\s]+( [^\s]+)?)", str(error))
            what = f" ({found.group(0)})" if found else ""
            raise ValueError(f"{path}: refused: the file holds Python objects that would run code when "
                             f"loaded{what}; only tensors and plain containers are accepted; nothing was executed") from None
        raise ValueError(f"{path}: not a checkpoint ({str(error).splitlines()[0]})") from None
    except (KeyError, RuntimeError, EOFError, OSError, ValueError) as error:
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise ValueError(f"{path}: not a checkpoint ({type(error).__name__}: {first_line})") from None


def state_dict_of(checkpoint: object, path: str | os.PathLike = "checkpoint") -> dict[str, torch.Tensor]:
    """The model weights in a loaded checkpoint (release dict, ours, or a bare state dict), without ``module.``."""
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping) or not checkpoint or not all(torch.is_tensor(v) for v in checkpoint.values()):
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
