#!/usr/bin/env python
"""Evaluate a checkpoint beyond the validation set: ImageNet val, -V2, -ReaL, -A, -R, -Sketch and -C.

    python scripts/eval_variants.py --resume CKPT [--val DIR] [--v2 DIR] [--real FILE] [--a DIR] [--r DIR] \\
        [--sketch DIR] [--c DIR] --json OUT [--gpu 0,1,2,3]

Each set runs with the checkpoint's evaluation transform (as ``main_imagenet.py -e``: ``--val-resize-size`` /
``--val-crop-size``, else the checkpoint's recorded recipe, else 256 / 224), on one process, one per GPU
(``--gpu 0,1,2,3``) or torchrun's, each image counted exactly once. A set not given is skipped. The logic (labels,
masks, ReaL, mCE) is in ``training/variants.py``; layouts and sources: docs/variants.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from tqdm import tqdm  # noqa: E402

import networks  # noqa: E402
from training import distributed, performance, run, variants  # noqa: E402
from training.checkpoint import CheckpointOptions, load_weights  # noqa: E402
from training.data import DataOptions, EvalShard, class_list, resized_notice  # noqa: E402
from training.engine import LoopOptions, StepOptions, evaluate  # noqa: E402
from training.errors import UserError, exit_status  # noqa: E402
from training.evaluation import EvalOptions, evaluation_model  # noqa: E402
from training.metrics import RunLog, show_progress  # noqa: E402
from training.options import HelpFormatter, Options  # noqa: E402
from training.performance import INPUT_PIPELINES, amp_dtype_for, set_tf32, to_device  # noqa: E402
from training.presets import eval_transform  # noqa: E402

FOLDER_SETS = ("val", "v2", "a", "r", "sketch", "c")


@dataclass(frozen=True)
class VariantsOptions(Options):
    """Which sets to evaluate, where they are, and how the images are read."""

    resume: str | None = None
    val: str | None = None
    v2: str | None = None
    real: str | None = None
    a: str | None = None
    r: str | None = None
    sketch: str | None = None
    c: str | None = None
    classes_from: str | None = None
    json: str | None = None
    val_resize_size: int | None = None  # None: the checkpoint's recipe, else DataOptions'
    val_crop_size: int | None = None
    workers: int = DataOptions.workers
    batch_size: int = LoopOptions.batch_size
    input_pipeline: str = DataOptions.input_pipeline
    no_progress: bool = False

    def check(self) -> None:
        self.at_least_one("batch_size")
        self.not_negative("workers")
        for name in ("val_resize_size", "val_crop_size"):
            if getattr(self, name) is not None:
                self.at_least_one(name)
        if not self.resume:
            raise UserError("--resume CKPT is required: the checkpoint to evaluate")
        if not self.json:
            raise UserError("--json OUT is required: where to write the results")
        if not self.sets:
            raise UserError("no set to evaluate: give at least one of --val, --v2, --real, --a, --r, --sketch, --c")
        if self.real and not self.val:
            raise UserError("--real scores the validation images: give --val DIR too")

    @property
    def sets(self) -> list[str]:
        return [name for name in variants.SETS if getattr(self, name)]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    arg = parser.add_argument
    arg("--resume", required=True, metavar="CKPT", help="the checkpoint to evaluate (a file or a run folder)")
    arg("--val", metavar="DIR", help="ImageNet val: DIR/<wnid>/<image>, or scripts/make_shards.py's OUT (its val "
                                     "shards) or OUT/val")
    arg("--v2", metavar="DIR", help="ImageNet-V2: DIR/<class index 0-999>/<image>")
    arg("--real", metavar="FILE", help="ReaL labels (real.json), scored on the --val images by sorted file name")
    arg("--a", metavar="DIR", help="ImageNet-A: DIR/<wnid>/<image> (200 classes: logits restricted to them)")
    arg("--r", metavar="DIR", help="ImageNet-R: DIR/<wnid>/<image> (200 classes: logits restricted to them)")
    arg("--sketch", metavar="DIR", help="ImageNet-Sketch: DIR/<wnid>/<image>")
    arg("--c", metavar="DIR", help="ImageNet-C: DIR/<corruption>/<severity 1-5>/<wnid>/<image>")
    arg("--classes-from", metavar="DIR",
        help="an ImageNet folder whose sorted class folders are the model's classes (or a sharded OUT: its class "
             "list), for checkpoints that record none (the release's) (default: --val's)")
    arg("--json", required=True, metavar="OUT", help="where to write the results")
    arg("--val-resize-size", default=None, type=int,
        help="resize the shorter side to this (default: the checkpoint's recipe, else 256)")
    arg("--val-crop-size", default=None, type=int, help="centre crop size (default: the checkpoint's recipe, else 224)")
    arg("-j", "--workers", default=VariantsOptions.workers, type=int, metavar="N",
        help="data loading workers per node (divided among the node's processes)")
    arg("-b", "--batch-size", default=VariantsOptions.batch_size, type=int, metavar="N",
        help="batch over all processes")
    arg("--input-pipeline", default=VariantsOptions.input_pipeline, choices=INPUT_PIPELINES,
        help="pil: torchvision's PIL transforms; uint8: the same crops, normalised on the device")
    arg("--no-progress", action="store_true", help="no progress bars")
    run.add_options(parser)  # -a, --attention_type, --attention_param, --simam-impl (the checkpoint's otherwise)
    performance.add_options(parser)
    distributed.add_options(parser)
    return parser


@dataclass(frozen=True)
class Job:
    """The command line, resolved once."""

    sets: VariantsOptions
    model: run.ModelOptions
    speed: performance.PerformanceOptions
    launch: distributed.LaunchOptions
    extra: dict[str, Any] = field(default_factory=dict)

    def config(self) -> run.Config:
        """A ``training.run.Config`` for the shared phases (``find_checkpoint``): evaluation of ``--resume``."""
        options = {name: kind() for name, kind in run.OPTION_KINDS.items() if name != "schedule"}
        options["schedule"] = run.LrSchedule(epochs=LoopOptions.epochs)  # unused: nothing trains
        options.update(checkpoints=CheckpointOptions(resume=self.sets.resume), evaluation=EvalOptions(evaluate=True),
                       model=self.model, performance=self.speed, launch=self.launch,
                       data=DataOptions(workers=self.sets.workers, input_pipeline=self.sets.input_pipeline,
                                        train=False))
        return run.Config(**options, recipe={})


def resolve(args: argparse.Namespace) -> Job:
    return Job(VariantsOptions.from_args(args), run.ModelOptions.from_args(args),
               performance.PerformanceOptions.from_args(args), distributed.LaunchOptions.from_args(args))


# ---------------------------------------------------------------------------------------------------------
# One process
# ---------------------------------------------------------------------------------------------------------

def model_classes(checkpoint, options: VariantsOptions) -> tuple[int, list[str] | None]:
    """The model's class count and wnids: the checkpoint's record, else ``--classes-from`` / ``--val``'s sorted
    class folders (None when neither is there)."""
    recorded = checkpoint.get("classes") if checkpoint else None
    num_classes = (checkpoint.get("num_classes") if checkpoint else None) or (len(recorded) if recorded else 1000)
    if recorded:
        return num_classes, list(recorded)
    folder = options.classes_from or options.val
    if not folder:
        return num_classes, None
    names = class_list(folder, "--classes-from" if options.classes_from else "--val")
    if len(names) != num_classes:
        raise UserError(f"{folder} has {len(names)} class folders but the model {num_classes} classes: name an "
                        "ImageNet folder with one folder per class (--classes-from DIR)")
    return num_classes, names


def needs_wnids(name: str, classes: list[str] | None) -> list[str]:
    if classes is None:
        raise UserError(f"--{name} needs the model's class names (wnids), which the checkpoint does not record: "
                        "give --classes-from DIR (an ImageNet folder with one folder per class) or --val DIR")
    return classes


def eval_sizes(checkpoint, options: VariantsOptions) -> tuple[int, int]:
    """``-e``'s evaluation sizes: the flags, else the checkpoint's recorded recipe, else DataOptions'."""
    recipe = (checkpoint.get("args") if checkpoint else None) or {}
    recipe = recipe if isinstance(recipe, dict) else {}
    resize = options.val_resize_size or recipe.get("val_resize_size") or DataOptions.val_resize_size
    crop = options.val_crop_size or recipe.get("val_crop_size") or DataOptions.val_crop_size
    return int(resize), int(crop)


@dataclass
class Evaluator:
    """A loaded model on this process's device and how its evaluation loaders are made."""

    model: torch.nn.Module
    options: StepOptions
    transform: Any
    pipeline: str
    batch: int
    workers: int
    log: RunLog
    num_classes: int

    def loader_of(self, samples) -> DataLoader:
        ctx = self.options.ctx
        dataset = variants.LabeledImages(samples, self.transform, self.pipeline)
        return DataLoader(dataset, batch_size=self.batch, sampler=EvalShard(len(dataset), ctx.world_size, ctx.rank),
                          num_workers=self.workers, pin_memory=self.options.device.type == "cuda")

    def accuracy(self, samples, what: str, restrict_to: list[int] | None = None) -> dict[str, float | int]:
        """top-1/top-5 (%) over ``samples`` (``engine.evaluate``: each image once over the processes); with
        ``restrict_to``, among those classes only."""
        model = self.model
        if restrict_to is not None:
            model, samples = variants.RestrictedLogits(model, restrict_to), variants.relabel(samples, restrict_to)
        self.log.print(f"=> {what}: {len(samples)} images")
        metrics = evaluate(model, self.loader_of(samples), self.options, self.log)
        assert metrics["count"] == len(samples), (metrics["count"], len(samples))
        return {"top1": metrics["top1"], "top5": metrics["top5"], "n_images": int(metrics["count"])}

    @torch.inference_mode()
    def predictions(self, samples, what: str) -> torch.Tensor:
        """Each image's top-5 classes (rows in ``samples``' order), each process predicting its share and the
        shares summed (``engine.evaluate``'s way of counting every image once)."""
        self.model.eval()
        loader, options = self.loader_of(samples), self.options
        mine = torch.tensor(list(loader.sampler), dtype=torch.long)
        found, at = torch.zeros(len(samples), 5, dtype=torch.long, device=options.device), 0
        k = min(5, self.num_classes)
        for images, target in tqdm(loader, desc=what, dynamic_ncols=True, leave=False,
                                   disable=not show_progress(options.ctx.is_main, not options.progress)):
            images, target = to_device(images, target, options.device, options.memory_format)
            with torch.autocast(options.device.type, dtype=options.amp_dtype, enabled=options.amp_dtype is not None):
                output = self.model(images)
            top = output.float().topk(k, dim=1).indices
            rows = mine[at:at + len(images)].to(options.device)
            found[rows, :k] = top + 1  # 0: not predicted here
            at += len(images)
        found = distributed.all_reduce_sum(found)
        assert bool((found[:, 0] > 0).all()), "an image was not evaluated"
        return (found - 1).cpu()


def worker(ctx: distributed.Context, job: Job) -> dict[str, Any]:
    """One process: the checkpoint, the model on the device, then each set given."""
    if ctx.device.type == "cuda":
        torch.cuda.set_device(ctx.device)
    try:
        return evaluate_sets(ctx, job)
    finally:
        distributed.cleanup()


def evaluate_sets(ctx: distributed.Context, job: Job) -> dict[str, Any]:
    options, config = job.sets, job.config()
    checkpoint = run.find_checkpoint(config, ctx)
    if checkpoint is None:
        raise UserError(f"no checkpoint to evaluate at --resume {options.resume}")
    network = run.identify(checkpoint, job.model)
    num_classes, classes = model_classes(checkpoint, options)
    resize, crop = eval_sizes(checkpoint, options)
    set_tf32(not job.speed.no_tf32)
    model = networks.create_net(network.arch, network.attention_type, network.attention_param, num_classes,
                                simam_impl=job.model.simam_impl)
    load_weights(model, checkpoint.weights(), checkpoint.path, network.arch, network.attention_type, num_classes)
    model.to(ctx.device, memory_format=job.speed.memory_format)
    amp_dtype = distributed.broadcast_object(amp_dtype_for(job.speed.amp, ctx.device) if ctx.is_main else None)
    if options.batch_size % ctx.world_size:
        raise UserError(f"-b {options.batch_size} does not split evenly over {ctx.world_size} processes")
    log = RunLog(os.path.dirname(os.path.abspath(options.json)), ctx.is_main, tensorboard=False)
    step = StepOptions(ctx, memory_format=job.speed.memory_format, amp_dtype=amp_dtype,
                       progress=not options.no_progress)
    evaluator = Evaluator(evaluation_model(model, job.speed.compile), step,
                          eval_transform(resize, crop, options.input_pipeline), options.input_pipeline,
                          options.batch_size // ctx.world_size,
                          math.ceil(options.workers / ctx.local_world_size), log, num_classes)
    log.print(f"=> {checkpoint.path}: {network.arch} + {network.attention_type}, {num_classes} classes, "
              f"resize {resize} / crop {crop}, {ctx.world_size} process(es) on {ctx.device.type}")

    # every set's folders are checked before the first one is evaluated
    samples: dict[str, Any] = {}
    if options.val:
        samples["val"] = variants.wnid_samples(options.val, needs_wnids("val", classes), "ImageNet val")
    real_labels = variants.real_labels(options.real, num_classes) if options.real else None
    if options.v2:
        samples["v2"] = variants.v2_samples(options.v2, num_classes)
    for name in ("a", "r", "sketch"):
        if getattr(options, name):
            samples[name] = variants.wnid_samples(getattr(options, name), needs_wnids(name, classes),
                                                  variants.SET_NAMES[name])
    resized = {name: images.resized for name, images in samples.items() if getattr(images, "resized", None)}
    for name, settings in resized.items():  # make_shards.py --max-side's shards
        log.print(f"=> warning: {resized_notice(getattr(options, name), settings)}")
    c_sets: dict[tuple[str, str], Any] = {}
    if options.c:
        for corruption, severities in variants.c_layout(options.c).items():
            for severity in severities:
                folder = os.path.join(options.c, corruption, severity)
                c_sets[corruption, severity] = variants.wnid_samples(folder, needs_wnids("c", classes), "ImageNet-C")

    result: dict[str, Any] = {
        "arch": network.arch, "attention_type": network.attention_type, "attention_param": network.attention_param,
        "checkpoint": checkpoint.path, "epoch": checkpoint.get("epoch"), "seed": checkpoint.get("seed"),
        "val_resize_size": resize, "val_crop_size": crop, "sets": {name: getattr(options, name)
                                                                     for name in options.sets},
        "data_resized": resized or None,
    }
    if "val" in samples and real_labels is not None:
        top5 = evaluator.predictions(samples["val"], "val + ReaL")
        target = torch.tensor([label for _, label in samples["val"]])
        result["val"] = {"top1": 100.0 * (top5[:, 0] == target).float().mean().item(),
                         "top5": 100.0 * (top5 == target[:, None]).any(1).float().mean().item(),
                         "n_images": len(target)}
        result["real"] = variants.real_top1(top5[:, 0].tolist(), samples["val"], real_labels, options.real)
    elif "val" in samples:
        result["val"] = evaluator.accuracy(samples["val"], "ImageNet val")
    for name in ("v2", "a", "r", "sketch"):
        if name in samples:
            mask = variants.present_classes(samples[name]) if name in variants.MASKED_SETS else None
            result[name] = evaluator.accuracy(samples[name], variants.SET_NAMES[name], mask)
    if c_sets:
        errors: dict[str, list[float]] = {}
        for (corruption, severity), images in c_sets.items():
            accuracy = evaluator.accuracy(images, f"ImageNet-C {corruption} {severity}")
            errors.setdefault(corruption, []).append(100.0 - accuracy["top1"])
        result["c"] = variants.c_summary(errors)
    for name in variants.SETS:
        if name in result:
            log.print(describe(name, result[name]))
    if ctx.is_main:
        folder = os.path.dirname(options.json)
        if folder:
            os.makedirs(folder, exist_ok=True)
        with open(options.json, "w") as f:
            json.dump(result, f, indent=2)
        log.print(f"=> wrote {options.json}")
    return result


def describe(name: str, entry: dict) -> str:
    """One line of results."""
    label = variants.SET_NAMES[name]
    if name == "c":
        mce = "n/a (not all 15 corruptions)" if entry["mce"] is None else f"{entry['mce']:.3f}"
        return f"----------- {label}: mCE {mce}, mean top-1 error {entry['mean_error']:.3f} -----------"
    top5 = f" Acc@5 {entry['top5']:.3f}" if "top5" in entry else ""
    return f"----------- {label}: Acc@1 {entry['top1']:.3f}{top5} ({entry['n_images']} images) -----------"


def main(args: argparse.Namespace) -> dict[str, Any] | None:
    """Evaluate on one process, one per GPU (``--gpu 0,1,2,3``) or torchrun's (``training.distributed.launch``);
    the results when they were computed in this process, None after spawning."""
    return distributed.launch(worker, resolve(args))


def cli(argv: list[str] | None = None) -> int:
    """Bad input: one line ``error: ...`` on stderr, exit status 2."""
    return exit_status(lambda: main(get_args_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(cli())
