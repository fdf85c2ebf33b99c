"""Checkpoint files: atomic writes, safe reads, exact-resume state and strict loading with a diagnosis."""

from __future__ import annotations

import argparse
import os
import random
import shutil
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

import networks
from networks.loading import MANIFEST, check_manifest, load_strict, manifest_entry, sha256_of  # noqa: F401

from .errors import TrainingError, UserError, one_line
from .options import Options

LATEST = "checkpoint.pth.tar"
PREVIOUS = "checkpoint.prev.pth.tar"  # the checkpoint LATEST replaced: a fallback if LATEST is damaged
BEST = "model_best.pth.tar"
RESUME_CANDIDATES = (LATEST, PREVIOUS, BEST)


@dataclass(frozen=True)
class CheckpointOptions(Options):
    """Where a run saves, how often, and what it resumes from."""

    ckpt: str = "./ckpts/"
    resume: str = ""
    checkpoint_interval: float = 10.0  # minutes
    checkpoint_every_steps: int = 0

    def check(self) -> None:
        self.not_negative("checkpoint_interval", "checkpoint_every_steps")


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("checkpoints and recovery")
    arg = group.add_argument
    arg("--ckpt", default=CheckpointOptions.ckpt, help="folder to output checkpoints (a run folder is made inside)")
    arg("--resume", default=CheckpointOptions.resume, type=str, metavar="PATH",
        help="checkpoint to resume from (a file or a run folder; 'auto': this run's folder if it has a checkpoint, "
             "else start; the default for workers that torchrun --max-restarts restarted); with -e, the checkpoint "
             "to evaluate")
    arg("--checkpoint-interval", default=CheckpointOptions.checkpoint_interval, type=float, metavar="MINUTES",
        help="also save a resumable checkpoint inside an epoch every MINUTES of training (0: only after each epoch "
             "and on SIGTERM); a SIGKILL or a dead node then loses at most this much")
    arg("--checkpoint-every-steps", default=CheckpointOptions.checkpoint_every_steps, type=int, metavar="N",
        help="also save a resumable checkpoint every N training steps (0: off)")


def atomic_save(obj: Any, path: str, keep_previous: str | None = None) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash at any point leaves either the old file or the new one, never a partial file. With
    ``keep_previous``, the file ``path`` held is kept under that name (a hard link, so ``path`` never
    disappears; a rename where links are not supported).
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and os.path.isfile(path):
            _keep(path, keep_previous)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _keep(path: str, previous: str) -> None:
    link = f"{previous}.link{os.getpid()}"
    try:
        os.link(path, link)
        os.replace(link, previous)
    except OSError:
        os.replace(path, previous)


def remove_partial_saves(run_dir: str) -> None:
    """Temporary files a killed process left behind while saving (the files they were to replace are whole)."""
    for name in os.listdir(run_dir):
        if (name.startswith(".") and ".pth.tar.tmp" in name) or ".pth.tar.link" in name:
            os.remove(os.path.join(run_dir, name))


def save_checkpoint(saved: dict[str, Any], run_dir: str, best: bool = False) -> None:
    """Write the run's latest checkpoint (the one it replaces is kept as the previous) and, for a new best,
    the best one. Weights that are not finite are never written; a failed write is a ``TrainingError`` and
    leaves the files that were there as they were."""
    broken = [key for key, value in saved["state_dict"].items()
              if value.is_floating_point() and not torch.isfinite(value).all()]
    if broken:
        raise TrainingError(f"the model's {broken[0]} (and {len(broken) - 1} more) are NaN/inf; nothing was saved, so "
                            f"the checkpoints in {run_dir} are the last good ones. Lower --lr or add --warmup-epochs")
    for name in (LATEST, BEST) if best else (LATEST,):
        path = os.path.join(run_dir, name)
        try:
            atomic_save(saved, path, keep_previous=os.path.join(run_dir, PREVIOUS) if name == LATEST else None)
        except (OSError, RuntimeError) as error:  # torch's writer reports a full disk as a RuntimeError
            reason = error.strerror if isinstance(error, OSError) and error.strerror else one_line(error)
            # the file writer's own errors ("unexpected pos ... " at inline_container.cc, "failed writing") say a full
            # disk; others (what the checkpoint holds) do not
            if isinstance(error, RuntimeError) and not any(word in reason for word in ("inline_container", "writ")):
                raise TrainingError(f"cannot save {path}: {reason}; the checkpoint that was there is "
                                    "unchanged") from None
            free_mb = shutil.disk_usage(run_dir).free / 2 ** 20
            raise TrainingError(f"cannot write {path}: {reason} ({free_mb:.0f} MB free there: "
                                f"disk full or read-only?); "
                                f"the checkpoint that was there is unchanged; make room and continue with --resume "
                                f"{run_dir}") from None


def newest_valid_checkpoint(run_dir: str, report=print) -> tuple[str, Any] | None:
    """The readable checkpoint of ``run_dir`` (latest, previous, best) that is furthest into training, as
    ``(path, checkpoint)``; a damaged or truncated file is skipped and reported. None if there is none."""
    found, furthest = None, None
    for name in RESUME_CANDIDATES:
        path = os.path.join(run_dir, name)
        if not os.path.isfile(path):
            continue
        try:
            checkpoint = networks.load_checkpoint_file(path)
            if not isinstance(checkpoint, dict) or "epoch" not in checkpoint:
                raise ValueError("not a training checkpoint")
        except ValueError as error:
            report(f"=> skipping {path}: {one_line(error)}")
            continue
        progress = progress_of(checkpoint)
        if furthest is None or progress > furthest:  # ties: the first in candidate order; only one kept in memory
            found, furthest = (path, checkpoint), progress
    return found


def progress_of(checkpoint: Any) -> tuple[int, int]:
    """How far into training a checkpoint is: (completed epochs, iteration inside the next); (-1, 0) for a file
    without a training state (bare weights)."""
    if not (isinstance(checkpoint, dict) and "epoch" in checkpoint):
        return (-1, 0)
    return int(checkpoint["epoch"]), int(checkpoint.get("iteration", 0) or 0)


def verify_manifest(path: str) -> dict[str, str]:
    """The manifest row that lists ``path`` ({} if none does: see ``networks.loading.manifest_entry``), after checking
    the sha256 it gives, if any: a mismatch is a ``UserError``."""
    try:
        return check_manifest(path)
    except ValueError as error:
        raise UserError(str(error)) from None


def read_checkpoint(path: str) -> Any:
    """Load a checkpoint file with ``weights_only=True``; unusable files are a one-line ``UserError``."""
    try:
        return networks.load_checkpoint_file(path)
    except ValueError as error:
        raise UserError(str(error)) from None


def weights_of(checkpoint: Any, path: str) -> dict[str, torch.Tensor]:
    try:
        return networks.state_dict_of(checkpoint, path)
    except ValueError as error:
        raise UserError(str(error)) from None


def capture_rng(device: torch.device | None = None) -> dict[str, Any]:
    """Every RNG a training process draws from (its own GPU's, for a CUDA ``device``), in a form
    ``weights_only`` loading accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        states["cuda_device"] = torch.cuda.get_rng_state(device)
    return states


def capture_rng_per_process(device: torch.device) -> list[dict[str, Any]]:
    """Each process's ``capture_rng``, in rank order, on every process (a collective)."""
    if not dist.is_initialized():
        return [capture_rng(device)]
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, capture_rng(device))
    return states


def restore_rng(states: Mapping[str, Any], device: torch.device | None = None) -> None:
    """Restore ``capture_rng``'s states (the GPU's into ``device``). Files written before per-device states
    hold every GPU's state as ``cuda``; those are restored as they were saved."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if device is not None and device.type == "cuda" and "cuda_device" in states:
        torch.cuda.set_rng_state(states["cuda_device"], device)
    elif "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def rng_of_process(checkpoint: Mapping[str, Any], rank: int, world_size: int) -> Mapping[str, Any]:
    """The RNG states process ``rank`` saved, when the checkpoint has one per process for this many; else
    rank 0's (``rng``)."""
    per_process = checkpoint.get("rng_per_rank")
    return per_process[rank] if per_process and len(per_process) == world_size else checkpoint["rng"]


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: str, arch: str,
                 attention_type: str, num_classes: int) -> None:
    """``model.load_state_dict(state_dict, strict=True)``; on a mismatch, a ``UserError`` listing the
    missing/unexpected keys and the likely cause (other arch, other attention or other class count):
    ``networks.load_strict``."""
    try:
        load_strict(model, state_dict, path, arch, attention_type, num_classes)
    except ValueError as error:
        raise UserError(str(error)) from None
