"""Evaluation and export: ``-e`` (a checkpoint's top-1/top-5 and its evaluation JSON), ``--save_weights`` (the release's
``{'state_dict': ...}``, or safetensors with metadata and a weights card), and the release's evaluation line."""

from __future__ import annotations

import argparse
import json
import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import yaml
from torch import nn

import networks

from .checkpoint import atomic_save, load_weights
from .ema import ema_weights_of
from .engine import evaluate
from .errors import UserError
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
        help="save the model weights (CPU, no 'module.' prefix) as {'state_dict': ...} to PATH and exit; a PATH "
             "ending in .safetensors is written as safetensors with the network, classes, evaluation transform and "
             "recipe as metadata, plus a weights card beside it (PATH without the suffix + .json and .md); with -e, "
             "after evaluating, with the top-1/top-5 in both")
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
        # make_shards.py --max-side's settings, of the evaluated and of the training images: not the paper's protocol
        "data_resized": run.data.resized, "trained_on_resized": checkpoint.get("data_resized") if checkpoint else None,
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


def save_weights(run: Run, model: nn.Module, checkpoint: LoadedCheckpoint | None,
                 evaluated: dict[str, Any] | None = None) -> dict[str, Any]:
    """``--save_weights PATH``: the weights alone (CPU, no 'module.' prefix) as ``{'state_dict': ...}``, or for a
    ``.safetensors`` PATH as safetensors with ``weights_metadata`` and a weights card beside it (``write_card``).
    ``evaluated``: ``evaluate_checkpoint``'s result when the run evaluated the weights (``-e``)."""
    path, log = run.config.evaluation.save_weights, run.log
    result: dict[str, Any] = {"saved_weights": path}
    if not log.enabled:
        return result
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    if not path.endswith(".safetensors"):
        atomic_save({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}}, path)
        log.print(f"=> saved weights to {path}")
        return result
    metadata = weights_metadata(run, checkpoint, evaluated)
    networks.save_safetensors(path, model.state_dict(), metadata)
    card_json, card_md = write_card(path, metadata)
    log.print(f"=> saved weights to {path} (safetensors with metadata); weights card {card_md} and {card_json}")
    return {**result, "card": card_json}


def weights_metadata(run: Run, checkpoint: LoadedCheckpoint | None,
                     evaluated: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a safetensors weights file records: the network, its classes, evaluation transform, parameters and
    FLOPs, where the weights come from and the recipe that trained them, and top-1/top-5 when the run evaluated
    them. Read back by ``networks.load_checkpoint_file`` (the network is identified from it)."""
    spec, data, options = run.spec, run.config.data, run.config.evaluation
    transform = networks.EvalTransform(data.val_resize_size, data.val_crop_size)
    recipe = checkpoint.get("args") if checkpoint is not None and checkpoint.ours else None
    metadata: dict[str, Any] = {
        "arch": spec.arch, "attention_type": spec.attention_type, "attention_param": spec.attention_param,
        "attention": spec.attention_name, "num_classes": len(run.data.classes), "classes": list(run.data.classes),
        "transform": transform.as_dict(),
        "params_m": run.cost.params_m if run.cost else None, "gflops": run.cost.gflops if run.cost else None,
        "flops_image_size": data.val_crop_size,
        "source": os.path.basename(checkpoint.path) if checkpoint is not None else None,
        "source_epoch": checkpoint.get("epoch") if checkpoint is not None else None,
        "source_best_acc": _number(checkpoint.get("best_acc")) if checkpoint is not None else None,
        "weights": "ema" if options.eval_ema else "model",
        "recipe": recipe, "torch_version": str(torch.__version__),
    }
    if evaluated is not None:
        metadata["evaluations"] = {"val": {key: evaluated.get(key) for key in
                                           ("top1", "top5", "n_images", "tta", "data")}}
        metadata.update(top1=evaluated["top1"], top5=evaluated["top5"])
    return metadata


def _number(value: Any) -> float | None:
    """A float from a number or a one-element tensor (the release saved ``best_acc`` as a tensor)."""
    if torch.is_tensor(value) and value.numel() == 1:
        return float(value)
    return float(value) if isinstance(value, (int, float)) else None


def card_paths(path: str) -> tuple[str, str]:
    """The weights card of a ``.safetensors`` file: the same path without the suffix, with .json and .md."""
    stem = path[:-len(".safetensors")] if path.endswith(".safetensors") else path
    return f"{stem}.json", f"{stem}.md"


def write_card(path: str, metadata: dict[str, Any]) -> tuple[str, str]:
    """The weights card beside ``path``: JSON (``metadata`` plus the file's name, size and sha256) and Markdown for
    people. More evaluations (other test sets) go in ``metadata['evaluations']``, one entry per set."""
    card = {"file": os.path.basename(path), "sha256": networks.sha256_of(path), "bytes": os.path.getsize(path),
            **metadata}
    json_path, md_path = card_paths(path)
    with open(json_path, "w") as f:
        json.dump(card, f, indent=2)
    with open(md_path, "w") as f:
        f.write(card_markdown(card))
    return json_path, md_path


def card_markdown(card: dict[str, Any]) -> str:
    """The Markdown weights card of ``write_card``'s JSON."""
    transform = card["transform"]

    def fmt(value: Any, digits: int = 2) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    lines = [
        f"# {card['file']}", "",
        f"{card['arch']} {'without attention' if card['attention_type'] == 'none' else 'with ' + card['attention']}, "
        f"{card['num_classes']} classes "
        f"({'the exponential moving average of the weights' if card['weights'] == 'ema' else 'the model weights'} of "
        f"{card['source'] or 'a randomly initialised model'}"
        + (f", epoch {card['source_epoch']}" if card.get("source_epoch") is not None else "") + ").", "",
        "| | |", "|---|---|",
        f"| arch | `{card['arch']}` |",
        f"| attention | `{card['attention_type']}` |",
        f"| attention parameter (lambda for SimAM) | {fmt(card['attention_param'], 4)} |",
        f"| parameters | {fmt(card['params_m'])} M |",
        f"| FLOPs (multiply-adds, at {card['flops_image_size']} px) | {fmt(card['gflops'], 3)} G |",
    ]
    for name, result in (card.get("evaluations") or {}).items():
        lines.append(f"| top-1 / top-5 on {name} ({result.get('n_images')} images"
                     + (f", {result['tta']} TTA" if result.get("tta") not in (None, "none") else "")
                     + f") | {fmt(result.get('top1'))} / {fmt(result.get('top5'))} % |")
    if not card.get("evaluations"):
        lines.append("| top-1 / top-5 | not evaluated (save with -e to record them)"
                     + (f"; the training run's best validation top-1: {fmt(card['source_best_acc'])} %"
                        if card.get("source_best_acc") is not None else "") + " |")
    lines += [
        f"| evaluation transform | resize the shorter side to {transform['resize_size']} "
        f"({transform['interpolation']}), centre crop {transform['crop_size']}, normalise with mean "
        f"{transform['mean']} and std {transform['std']} |",
        f"| sha256 | `{card['sha256']}` |",
        f"| file | {card['bytes']} bytes, safetensors |", "",
        "Load it with `networks.load_network(FILE)`, `torch.hub.load(REPO, "
        f"'{card['arch']}_{card['attention_type']}', source='local', weights=FILE)`, `scripts/predict.py --resume "
        "FILE IMAGES` or `main_imagenet.py DATA -e --resume FILE`.", "",
        "## Training recipe", "",
    ]
    if card.get("recipe"):
        lines += ["```yaml", yaml.safe_dump(card["recipe"], sort_keys=True).rstrip(), "```"]
    else:
        lines.append("Not recorded (the weights come from a file without a recipe: the release's or a bare state "
                     "dict).")
    return "\n".join(lines) + "\n"


def final_line(metrics: dict[str, float]) -> str:
    """The release's evaluation line."""
    return f"----------- Acc@1 {metrics['top1']:.3f} Acc@5 {metrics['top5']:.3f} -----------"
