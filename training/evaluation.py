"""Evaluation and export: ``-e`` (a checkpoint's top-1/top-5 and its evaluation JSON), ``--save_weights``, and the
release's evaluation line."""

from __future__ import annotations

import argparse
import json
import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from .checkpoint import atomic_save, load_weights
from .ema import ema_weights_of
from .engine import evaluate
from .errors import UserError
from .metrics import RunLog
from .options import Options
from .performance import compile_model
from .state import LoadedCheckpoint

if TYPE_CHECKING:
    from .run import Run

TTA_CHOICES = ("none", "flip")


@dataclass(frozen=True)
class EvalOptions(Options):
    """What the run does besides training: evaluate a checkpoint, export its weights; how it evaluates."""

    evaluate: bool = False
    save_weights: str | None = None
    eval_ema: bool = False
    eval_json: str | None = None
    tta: str = "none"  # one of TTA_CHOICES

    @property
    def trains(self) -> bool:
        return not (self.evaluate or self.save_weights)

    def check(self) -> None:
        if self.eval_ema and self.trains:
            raise UserError("--eval-ema picks the checkpoint's EMA weights for -e or --save_weights; training with an "
                            "EMA is --model-ema")


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("evaluation and export")
    arg = group.add_argument
    arg("-e", "--evaluate", action="store_true", help="evaluate the model on the validation set and exit")
    arg("--save_weights", default=None, type=str, metavar="PATH",
        help="save the model weights (CPU, no 'module.' prefix) as {'state_dict': ...} to PATH and exit")
    arg("--eval-ema", action="store_true", help="with -e or --save_weights: the checkpoint's EMA weights")
    arg("--eval-json", default=None, metavar="PATH", help="with -e: where to write the evaluation JSON")
    arg("--tta", default=EvalOptions.tta, choices=TTA_CHOICES,
        help="evaluation: flip averages the logits of each image and its mirror (not the paper's single-crop "
             "protocol)")


def evaluation_model(model: nn.Module, compiled: bool) -> nn.Module:
    """The model validation runs (compiled on its own with ``--compile``: its graph has no autograd)."""
    return compile_model(model) if compiled else model


def evaluate_checkpoint(run: Run, checkpoint: LoadedCheckpoint | None) -> dict[str, Any]:
    """``-e``: the checkpoint's top-1/top-5 over the validation set, the release's line and an evaluation JSON."""
    options, data = run.config.evaluation, run.config.data
    if checkpoint is None:
        warnings.warn("-e without --resume evaluates a randomly initialised model")
    else:
        load_model_weights(run, checkpoint, options.eval_ema)
    metrics = evaluate(evaluation_model(run.model, run.config.performance.compile), run.data.val_loader, run.options,
                       run.log)
    result = {
        "arch": run.spec.arch, "attention_type": run.spec.attention_type, "attention_param": run.spec.attention_param,
        "checkpoint": checkpoint.path if checkpoint else None, "epoch": checkpoint.get("epoch") if checkpoint else None,
        "top1": metrics["top1"], "top5": metrics["top5"], "loss": metrics["loss"], "n_images": metrics["count"],
        "bad_images": metrics["bad_images"],
        "params_m": run.cost.params_m if run.cost else None, "gflops": run.cost.gflops if run.cost else None,
        "val_resize_size": data.val_resize_size, "val_crop_size": data.val_crop_size, "data": data.data,
        "tta": options.tta, "weights": "ema" if options.eval_ema else "model",
    }
    if run.log.enabled:
        n_val = len(run.data.val_loader.dataset)
        assert metrics["count"] + metrics["bad_images"] == n_val, (metrics["count"], metrics["bad_images"], n_val)
        run.log.print(final_line(metrics), to_file=True)
        stem = os.path.basename(checkpoint.path if checkpoint else "random-init").split(".")[0]
        json_path = options.eval_json or os.path.join(run.spec.run_dir, f"eval_{stem}.json")
        if os.path.dirname(json_path):
            os.makedirs(os.path.dirname(json_path), exist_ok=True)
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
        run.log.print(f"=> wrote {json_path}")
        result["json"] = json_path
    return result


def load_model_weights(run: Run, checkpoint: LoadedCheckpoint, eval_ema: bool) -> None:
    """The checkpoint's weights, or with ``eval_ema`` its EMA weights, strictly into the model."""
    if eval_ema:
        load_weights(run.model, ema_weights_of(checkpoint.content, checkpoint.path), checkpoint.path, run.spec.arch,
                     run.spec.attention_type, len(run.data.classes))
    else:
        checkpoint.load_into(run.model, run.spec, len(run.data.classes))
        if checkpoint.get("best_of") == "ema":
            run.log.print(f"=> note: {checkpoint.path}'s best accuracy was its EMA's; --eval-ema evaluates those")


def save_weights(model: nn.Module, path: str, log: RunLog) -> dict[str, Any]:
    """``--save_weights``: the weights alone (CPU, no 'module.' prefix) as ``{'state_dict': ...}``."""
    if log.enabled:
        atomic_save({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}}, path)
        log.print(f"=> saved weights to {path}")
    return {"saved_weights": path}


def final_line(metrics: dict[str, float]) -> str:
    """The release's evaluation line."""
    return f"----------- Acc@1 {metrics['top1']:.3f} Acc@5 {metrics['top5']:.3f} -----------"
