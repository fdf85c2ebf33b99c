"""What a run is (``RunSpec``), the checkpoint it starts from (``LoadedCheckpoint``) and what its checkpoints hold
(``TrainState``, with its to/from-checkpoint methods).

The file format: the release's fields (``epoch``, ``arch``, ``state_dict``, ``best_acc``, ``optimizer``) plus what
an exact resumption needs (``format``, ``iteration``, ``iterations_per_epoch``, ``scheduler``, ``scaler``,
``attention_type``, ``attention_param``, ``num_classes``, ``classes``, ``seed``, ``sums``, ``args``, ``rng``,
``rng_per_rank``, ``torch_version``), and with ``--model-ema`` the average as ``model_ema`` (torchvision's key) and
which of the two made ``best_acc`` as ``best_of``. ``epoch`` counts completed epochs; ``iteration`` > 0 marks a run
stopped inside epoch ``epoch``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import networks

from . import distributed
from .checkpoint import load_weights, restore_rng, rng_of_process, weights_of
from .ema import ExponentialMovingAverage, ema_state, load_ema_state
from .errors import UserError, one_line
from .optim import load_optimizer_state

CHECKPOINT_FORMAT = "simam-imagenet/1"


@dataclass(frozen=True)
class RunSpec:
    """What a run trains or evaluates, resolved once from the command line and its checkpoint."""

    arch: str
    attention_type: str
    attention_param: float | None
    seed: int
    deterministic: bool  # the seed was given: cuDNN picks deterministic kernels
    run_dir: str

    @property
    def attention_name(self) -> str:
        return networks.describe_attention(self.attention_type, self.attention_param)


def run_folder(ckpt: str, network: networks.NetworkSpec, seed: int | None) -> str:
    """``<ckpt>/imagenet-<arch>[-<attention>-param<p>][-seed<s>]``, as the release names it."""
    name = f"imagenet-{network.arch}"
    if network.attention_type != "none":
        name += f"-{network.attention_type}"
        if network.attention_param is not None and networks.ATTENTIONS.get(network.attention_type).param_name:
            name += f"-param{float(network.attention_param)}"
    if seed is not None:
        name += f"-seed{seed}"
    return os.path.join(ckpt, name)


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint file as read (``weights_only``): ours, the release's, or a bare state dict; ``listed`` is its
    row in a ``manifest.csv`` (arch, attention_type, attention_param, sha256), if one lists it."""

    path: str
    content: Any
    listed: dict[str, str] = field(default_factory=dict)

    @property
    def ours(self) -> bool:
        return isinstance(self.content, dict) and self.content.get("format") == CHECKPOINT_FORMAT

    @property
    def recorded_classes(self) -> list[str] | None:
        """The class folder names the weights were trained on, where the file records them (our checkpoints, and
        safetensors files of ours: ``networks.load_checkpoint_file`` hands their ``classes`` up); else None."""
        classes = self.get("classes")
        is_ours = self.ours or (isinstance(self.content, dict) and isinstance(self.content.get("metadata"), dict))
        return classes if is_ours and isinstance(classes, list) else None

    @property
    def has_training_state(self) -> bool:
        return isinstance(self.content, dict) and "epoch" in self.content

    def get(self, key: str, default: Any = None) -> Any:
        return self.content.get(key, default) if isinstance(self.content, dict) else default

    def weights(self) -> dict[str, torch.Tensor]:
        return weights_of(self.content, self.path)

    def load_into(self, model: nn.Module, spec: RunSpec, num_classes: int) -> None:
        """Load the weights strictly; a mismatch is a ``UserError`` with the likely cause."""
        load_weights(model, self.weights(), self.path, spec.arch, spec.attention_type, num_classes)


@dataclass
class TrainState:
    """What training carries from step to step and a checkpoint saves: the model (unwrapped), its optimizer,
    schedule (stepped per iteration) and gradient scaler, the weights' moving average (``--model-ema``) and the
    position: ``epoch`` (completed epochs), ``iteration`` inside it, the running ``sums`` of a stopped epoch, and the
    best validation top-1 (``best_of``: of the model or of its average)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    iterations_per_epoch: int
    epoch: int = 0
    iteration: int = 0
    best_acc: float = 0.0
    sums: list[float] | None = None
    ema: ExponentialMovingAverage | None = None
    best_of: str = "model"

    def to_checkpoint(self, spec: RunSpec, classes: list[str], recipe: dict[str, Any],
                      rng_per_rank: list[dict[str, Any]]) -> dict[str, Any]:
        """The checkpoint dict (the format in the module docstring); ``rng_per_rank`` from every process."""
        weights = self.model.state_dict()
        for name, _ in self.model.named_buffers():  # torch.save refuses buffers of several dtypes in one storage
            if name in weights:  # (``training.optim.flatten_buffers``); they are small
                weights[name] = weights[name].clone()
        saved = {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch, "arch": spec.arch, "state_dict": weights, "best_acc": self.best_acc,
            "optimizer": self.optimizer.state_dict(),
            "iteration": self.iteration, "iterations_per_epoch": self.iterations_per_epoch,
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "attention_type": spec.attention_type, "attention_param": spec.attention_param,
            "num_classes": len(classes), "classes": classes, "seed": spec.seed,
            "sums": self.sums if self.iteration else None,
            "args": recipe, "rng": rng_per_rank[0], "rng_per_rank": rng_per_rank,
            "torch_version": str(torch.__version__),
        }
        if self.ema is not None:
            saved.update(model_ema=ema_state(self.ema), best_of=self.best_of)
        return saved

    def load_checkpoint(self, checkpoint: LoadedCheckpoint, spec: RunSpec, num_classes: int,
                        ctx: distributed.Context) -> None:
        """Restore the weights and, as far as the file has them, the training state.

        A release file gives the weights, the epoch, best_acc and its SGD state (momentum); the schedule is
        placed at its epoch. Ours also give the schedule, the gradient scaler (when both runs use one), every
        process's RNG states and the position inside an epoch. A bare state dict gives the weights only.
        """
        checkpoint.load_into(self.model, spec, num_classes)
        if not checkpoint.has_training_state:
            return
        saved, path = checkpoint.content, checkpoint.path
        try:
            if "optimizer" in saved:
                load_optimizer_state(self.optimizer, saved["optimizer"])
            if self.ema is not None:  # a file saved without an average starts one from its weights
                load_ema_state(self.ema, saved.get("model_ema") if checkpoint.ours else None, self.model)
            if checkpoint.ours:
                self.scheduler.load_state_dict(saved["scheduler"])
                if saved["scaler"]:  # empty when saved without fp16: a new scaler starts (and the reverse is ignored)
                    self.scaler.load_state_dict(saved["scaler"])
                restore_rng(rng_of_process(saved, ctx.rank, ctx.world_size), ctx.device)
            else:  # the release's file: place the per-iteration schedule at the checkpoint's epoch
                self.scheduler.last_epoch = saved["epoch"] * self.iterations_per_epoch - 1
                self.scheduler.step()
        except (ValueError, KeyError, RuntimeError) as error:
            raise UserError(f"{path}: cannot restore the training state ({one_line(error)}); "
                            "use -e to evaluate it or start a new run") from None
        iteration = saved.get("iteration", 0) if checkpoint.ours else 0
        if iteration and saved.get("iterations_per_epoch") != self.iterations_per_epoch:
            raise UserError(f"{path} stopped inside an epoch of {saved.get('iterations_per_epoch')} iterations; "
                            f"this run has {self.iterations_per_epoch}: resume with the same data, -b and number of "
                            "processes")
        self.epoch, self.iteration = int(saved["epoch"]), iteration
        self.best_acc, self.sums = float(saved.get("best_acc", 0.0)), saved.get("sums")
        self.best_of = saved.get("best_of", "model")
