#!/usr/bin/env python
"""Train or evaluate ImageNet CNNs with SimAM (or SE, CBAM, ECA, SRM) attention.

The paper's commands work as they are:

    python main_imagenet.py DATA --gpu 0,1,2,3 --epochs 100 -j 20 -a resnet18 --attention_type simam \\
        --attention_param 0.1
    python main_imagenet.py DATA --gpu 0,1,2,3 -j 20 -a resnet18 -e --resume PATH.pth
    torchrun --nnodes 2 --nproc_per_node 8 ... main_imagenet.py DATA --config configs/resnet50_simam.yaml

``--gpu 0,1,2,3`` starts one DistributedDataParallel process per GPU; under torchrun each process takes
its place from the environment; without CUDA everything runs on the CPU (gloo when distributed).
The flow reads top to bottom: cli -> main (launch) -> worker, whose phases are find_checkpoint, resolve_run,
set_up, then evaluate_checkpoint, save_weights or fit; the loops are in training/engine.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import networks
from training import distributed, presets
from training.checkpoint import (
    BEST,
    LATEST,
    RESUME_CANDIDATES,
    atomic_save,
    capture_rng_per_process,
    load_weights,
    newest_valid_checkpoint,
    progress_of,
    read_checkpoint,
    remove_partial_saves,
    save_checkpoint,
    verify_manifest,
)
from training.config import parse_with_config, recipe_of, save_config
from training.data import Data, build_data
from training.ema import build_ema, ema_weights_of
from training.engine import IntervalCheckpoints, StepOptions, evaluate, train_one_epoch
from training.errors import TrainingError, UserError, exit_status, one_line
from training.lock import RunLock, job_id
from training.metrics import RunLog
from training.mixing import BatchMixer
from training.optim import build_optimizer, flatten_buffers
from training.performance import (
    AMP_CHOICES,
    INPUT_PIPELINES,
    amp_dtype_for,
    compile_model,
    describe_amp,
    set_tf32,
)
from training.schedule import SCHEDULES, build_scheduler, schedule_options
from training.signals import StopRequest
from training.state import LoadedCheckpoint, RunSpec, TrainState, run_folder

# With fp16 the gradient scaler skips steps whose gradients overflow; the schedule still advances per iteration.
warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The command line: the release's flags with their names and meanings, plus the additions."""
    parser = argparse.ArgumentParser(
        description="Train or evaluate ImageNet CNNs with SimAM / SE / CBAM / ECA / SRM attention.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, add_help=add_help)
    arg = parser.add_argument
    arg("data", metavar="DIR", nargs="?", default=None,
        help="dataset folder with train/ and val/, one sub-folder per class (not needed with --dummy)")
    arg("--config", metavar="FILE.yaml", default=None,
        help="YAML recipe (see configs/); flags given on the command line override it")
    arg("-a", "--arch", metavar="ARCH", default=None,
        help=f"model architecture: {', '.join(networks.ARCHS)} (default: resnet18, or the checkpoint's with --resume)")
    arg("-j", "--workers", default=4, type=int, metavar="N",
        help="data loading workers per node (divided among the node's processes)")
    arg("--epochs", default=90, type=int, metavar="N", help="number of total epochs to run")
    arg("--start-epoch", default=0, type=int, metavar="N",
        help="manual epoch number (useful on restarts; --resume sets it from the checkpoint)")
    arg("-b", "--batch-size", default=256, type=int, metavar="N",
        help="total mini-batch size over all processes (split evenly among them)")
    arg("--lr", "--learning-rate", default=0.1, type=float, metavar="LR", dest="lr", help="initial learning rate")
    arg("--momentum", default=0.9, type=float, metavar="M", help="SGD momentum")
    arg("--wd", "--weight-decay", default=1e-4, type=float, metavar="W", dest="weight_decay", help="weight decay")
    arg("-p", "--print-freq", default=10, type=int, metavar="N", help="print (and sync metrics) every N iterations")
    arg("--resume", default="", type=str, metavar="PATH",
        help="checkpoint to resume from (a file or a run folder; 'auto': this run's folder if it has a checkpoint, "
             "else start; the default for workers that torchrun --max-restarts restarted); with -e, the checkpoint "
             "to evaluate")
    arg("-e", "--evaluate", action="store_true", help="evaluate the model on the validation set and exit")
    arg("--pretrained", action="store_true",
        help="accepted for compatibility with the release, where it had no effect; ignored with a warning")
    arg("--world-size", default=-1, type=int, help="number of nodes for distributed training (with --gpu / spawn)")
    arg("--rank", default=-1, type=int, help="node rank for distributed training (with --gpu / spawn)")
    arg("--dist-url", default=None, type=str,
        help="url used to set up distributed training (default: a free local port on one node; env:// under torchrun)")
    arg("--dist-backend", default=None, type=str, help="distributed backend (default: nccl on GPUs, gloo on CPU)")
    arg("--dist-timeout", default=30.0, type=float, metavar="MIN",
        help="minutes a process waits for the others before failing")
    arg("--seed", default=None, type=int,
        help="seed for initialisation, data order and augmentation (appended to the run folder name); also makes "
             "cuDNN deterministic (its benchmark mode off: slower on GPUs)")
    arg("--gpu", default=None, type=str,
        help="GPU ids to use, e.g. 0,1,2,3 (one process per GPU), or 'cpu' "
             "(default: GPU 0 if CUDA is available, else CPU)")
    arg("--multiprocessing-distributed", action="store_true",
        help="the release's flag: one process per GPU (every visible GPU without --gpu) on each of --world-size "
             "nodes; implied when --gpu lists several GPUs")
    arg("--ckpt", default="./ckpts/", help="folder to output checkpoints (a run folder is made inside)")
    arg("--attention_type", type=str, default=None,
        help=f"attention type: {', '.join(networks.ATTENTIONS)} (default: none, or the checkpoint's with --resume)")
    arg("--attention_param", type=float, default=None,
        help="attention parameter: lambda for simam (default 0.1), reduction ratio for se/cbam (default 16), "
             "kernel size for eca (default adaptive)")
    arg("--log_freq", type=int, default=500, help="write a training line to log.txt every N iterations")
    arg("--cos_lr", action="store_true",
        help="cosine learning rate, per epoch as in the release: epoch e uses lr * (1 + cos(pi (e+1) / epochs)) / 2")
    arg("--save_weights", default=None, type=str, metavar="PATH",
        help="save the model weights (CPU, no 'module.' prefix) as {'state_dict': ...} to PATH and exit")
    arg("--train-crop-size", default=224, type=int, help="RandomResizedCrop size for training")
    arg("--val-resize-size", default=256, type=int, help="validation: resize the shorter side to this")
    arg("--val-crop-size", default=224, type=int, help="validation: centre crop size")
    arg("--label-smoothing", default=0.0, type=float, help="label smoothing of the training loss")
    arg("--warmup-epochs", default=0.0, type=float, help="linear learning-rate warmup, in epochs (per iteration)")
    arg("--amp", default="off", choices=AMP_CHOICES,
        help="mixed precision; fp16 uses a gradient scaler; auto: bf16 where the device computes it faster than "
             "fp32 (GPUs with native bf16; on a CPU, measured once by a short probe and kept in "
             "~/.cache/simam-imagenet/amp-probe.json), else fp16 on CUDA, else off")
    arg("--no-tf32", action="store_true",
        help="fp32 matrix products and convolutions in full fp32 on GPUs from Ampere on (default: TF32 for both, "
             "as torch does for convolutions; under --amp, for the operations autocast keeps in fp32)")
    arg("--channels-last", action="store_true", help="channels_last memory format for the model and inputs")
    arg("--compile", action="store_true", help="torch.compile the model (the first steps are slower while it compiles)")
    arg("--input-pipeline", default="pil", choices=INPUT_PIPELINES,
        help="pil: torchvision's PIL transforms to normalised floats (the release's); uint8: the same "
             "augmentation, faster, as uint8 batches normalised on the device")
    arg("--simam-impl", default=None, choices=networks.SIMAM_IMPLEMENTATIONS,
        help="how this run's SimAM modules run: auto (compiled kernels where torch.compile can build them, else "
             "eager), compiled, eager (both memory-efficient, same values), or reference (the paper's formula with "
             "plain autograd) (default: $SIMAM_IMPL, else auto)")
    arg("--eval-json", default=None, metavar="PATH", help="with -e: where to write the evaluation JSON")
    arg("--dummy", nargs="?", type=int, const=1281167, default=0, metavar="N",
        help="synthetic data instead of DATA: N training images (default: ImageNet's 1281167), N/25 validation")
    arg("--no-progress", action="store_true", help="no tqdm progress bars (they are also off when not on a terminal)")
    arg("--skip-bad-images", action="store_true",
        help="pass over images that cannot be read (training: the next readable image takes the place; "
             "validation: left out), naming them on stderr and in log.txt and counting them in metrics.jsonl; "
             "default: stop with an error naming the file")
    arg("--max-bad-steps", default=0, type=int, metavar="N",
        help="training steps per epoch whose loss may be NaN/inf (their updates are skipped) before the run stops")
    arg("--checkpoint-interval", default=10.0, type=float, metavar="MINUTES",
        help="also save a resumable checkpoint inside an epoch every MINUTES of training (0: only after each epoch "
             "and on SIGTERM); a SIGKILL or a dead node then loses at most this much")
    arg("--checkpoint-every-steps", default=0, type=int, metavar="N",
        help="also save a resumable checkpoint every N training steps (0: off)")
    modern = parser.add_argument_group(
        "modern recipe options (torchvision's names and meanings; all off by default, see configs/modern/)")
    arg = modern.add_argument
    arg("--lr-scheduler", default=None, choices=SCHEDULES,
        help="learning-rate schedule by name (default: step, or release_cosine with --cos_lr); "
             "stepped per iteration, combined with --warmup-epochs")
    arg("--lr-step-size", default=30, type=int, help="step: decay every N epochs")
    arg("--lr-gamma", default=0.1, type=float, help="step, multistep, exponential: decay factor")
    arg("--lr-milestones", default=[], type=int, nargs="+", metavar="EPOCH", help="multistep: epochs of the decays")
    arg("--lr-min", default=0.0, type=float, help="cosine: the learning rate it ends at")
    arg("--nesterov", action="store_true", help="Nesterov momentum")
    arg("--norm-weight-decay", default=None, type=float,
        help="weight decay of normalisation layers' parameters (default: --wd)")
    arg("--bias-weight-decay", default=None, type=float, help="weight decay of biases (default: --wd)")
    arg("--model-ema", action="store_true",
        help="keep an exponential moving average of the weights, evaluated every epoch beside the model")
    arg("--model-ema-decay", default=0.99998, type=float,
        help="EMA decay (adjusted for the batch size, --model-ema-steps and --epochs as torchvision does)")
    arg("--model-ema-steps", default=32, type=int, help="update the EMA every N optimizer steps")
    arg("--eval-ema", action="store_true", help="with -e or --save_weights: the checkpoint's EMA weights")
    arg("--mixup-alpha", default=0.0, type=float, help="MixUp with this Beta(alpha, alpha) (0: off)")
    arg("--cutmix-alpha", default=0.0, type=float,
        help="CutMix with this Beta(alpha, alpha) (0: off); with --mixup-alpha, one of the two per batch")
    arg("--auto-augment", default=None, choices=presets.AUTO_AUGMENT_POLICIES,
        help="augmentation policy: RandAugment, TrivialAugmentWide, AugMix or AutoAugment's ImageNet policy")
    arg("--ra-magnitude", default=9, type=int, help="RandAugment magnitude")
    arg("--augmix-severity", default=3, type=int, help="AugMix severity")
    arg("--random-erase", default=0.0, type=float, metavar="P", help="RandomErasing probability")
    arg("--train-size-schedule", default=None, metavar="START:END:FROM_EPOCH:TO_EPOCH",
        help="progressive resizing: training crops grow linearly from START px (before FROM_EPOCH) to END px "
             "(from TO_EPOCH on), in multiples of 32; replaces --train-crop-size")
    arg("--accum-steps", default=1, type=int, metavar="K",
        help="gradient accumulation: each optimizer step adds up K micro-batches of -b / (K x processes) images "
             "(-b stays the batch of a step; BatchNorm normalises each micro-batch on its own)")
    arg("--sync-bn", action="store_true", help="synchronised BatchNorm over the processes (GPUs only)")
    arg("--tta", default="none", choices=("none", "flip"),
        help="evaluation: flip averages the logits of each image and its mirror (not the paper's single-crop "
             "protocol)")
    return parser


# ---------------------------------------------------------------------------------------------------------
# Launch: one process here, one per GPU (spawn), or torchrun's.
# ---------------------------------------------------------------------------------------------------------

def main(args: argparse.Namespace) -> dict[str, Any] | None:
    """Train (or with ``args.evaluate`` evaluate) as ``args`` say.

    Returns the result (final metrics) when the work ran in this process; ``None`` after spawning.
    Bad input raises ``UserError``.
    """
    check_args(args)
    if distributed.launched_by_torchrun():
        return worker(torchrun_context(args), args)
    devices = distributed.parse_gpus(args.gpu, every_gpu=args.multiprocessing_distributed)
    nodes = max(args.world_size, 1)
    if len(devices) == 1 and nodes == 1:
        return worker(distributed.Context(device=devices[0]), args)
    if nodes > 1 and not args.dist_url:
        raise UserError("--dist-url is required with --world-size > 1 (e.g. tcp://MASTER_ADDR:23456)")
    dist_url = args.dist_url or f"tcp://127.0.0.1:{distributed.free_port()}"
    if len(devices) == 1:
        return worker(spawned_context(0, devices, args, dist_url), args)
    spawn(devices, args, dist_url)
    return None


def check_args(args: argparse.Namespace) -> None:
    """Reject bad flag values before any process starts (one line each)."""
    for name in ("epochs", "batch_size", "print_freq", "log_freq", "train_crop_size", "val_resize_size",
                 "val_crop_size", "model_ema_steps", "accum_steps", "augmix_severity", "lr_step_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("workers", "start_epoch", "warmup_epochs", "lr", "weight_decay", "momentum", "max_bad_steps",
                 "checkpoint_interval", "checkpoint_every_steps", "lr_gamma", "lr_min", "mixup_alpha", "cutmix_alpha",
                 "ra_magnitude", "norm_weight_decay", "bias_weight_decay"):
        if getattr(args, name) is not None and getattr(args, name) < 0:  # None: the option's default applies
            raise UserError(f"--{name.replace('_', '-')} must not be negative, got {getattr(args, name)}")
    if not 0.0 <= args.label_smoothing < 1.0:
        raise UserError(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    check_recipe_args(args)
    try:
        if args.arch is not None:
            networks.ARCHS.get(args.arch)
        if args.attention_type is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                networks.create_attn(args.attention_type, 64, args.attention_param)
    except ValueError as error:
        raise UserError(str(error)) from None
    if args.data is None and not args.dummy:
        raise UserError("the data folder DIR is required (or --dummy for synthetic data); see --help")
    if args.pretrained:
        warnings.warn("--pretrained had no effect in the release and is ignored here")


def check_recipe_args(args: argparse.Namespace) -> None:
    """The modern recipe options' values beyond their ranges' signs (one line each)."""
    if not 0.0 < args.model_ema_decay < 1.0:
        raise UserError(f"--model-ema-decay must be in (0, 1), got {args.model_ema_decay}")
    if not 0.0 <= args.random_erase <= 1.0:
        raise UserError(f"--random-erase is a probability in [0, 1], got {args.random_erase}")
    if args.batch_size % args.accum_steps:
        raise UserError(f"--accum-steps {args.accum_steps} does not divide -b {args.batch_size}: each optimizer step "
                        "adds up equal micro-batches")
    if args.cos_lr and args.lr_scheduler not in (None, "release_cosine"):
        raise UserError(f"--cos_lr is the release's name for --lr-scheduler release_cosine; it cannot be combined "
                        f"with --lr-scheduler {args.lr_scheduler}")
    try:
        schedule_options(iters_per_epoch=1, **scheduler_kwargs(args))
        if args.train_size_schedule:
            presets.train_size_schedule(args.train_size_schedule)
    except ValueError as error:
        raise UserError(str(error)) from None
    if args.eval_ema and not (args.evaluate or args.save_weights):
        raise UserError("--eval-ema picks the checkpoint's EMA weights for -e or --save_weights; training with an "
                        "EMA is --model-ema")


def scheduler_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The learning-rate schedule's options (``training.schedule.build_scheduler``) from the command line."""
    name = args.lr_scheduler or ("release_cosine" if args.cos_lr else "step")
    return dict(epochs=args.epochs, name=name, warmup_epochs=args.warmup_epochs, step_size=args.lr_step_size,
                gamma=args.lr_gamma, milestones=tuple(args.lr_milestones), lr_min=args.lr_min)


def optimizer_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The optimizer's options (``training.optim.build_optimizer``) from the command line."""
    return dict(lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay, nesterov=args.nesterov,
                norm_weight_decay=args.norm_weight_decay, bias_weight_decay=args.bias_weight_decay)


def torchrun_context(args: argparse.Namespace) -> distributed.Context:
    env = os.environ
    rank, world_size, local_rank = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])
    local_world_size = int(env.get("LOCAL_WORLD_SIZE", world_size))
    if torch.cuda.is_available() and (args.gpu or "").lower() != "cpu":
        devices = distributed.parse_gpus(args.gpu) if args.gpu else None
        if devices is not None and local_rank >= len(devices):
            raise UserError(f"--gpu {args.gpu} lists {len(devices)} GPUs "
                            f"but torchrun started {local_world_size} per node")
        device = devices[local_rank] if devices else torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    ctx = distributed.Context(device, rank, world_size, local_rank, local_world_size)
    distributed.init_process_group(ctx, args.dist_backend, "env://", args.dist_timeout)
    return ctx


def spawned_context(local_rank: int, devices: list[torch.device], args: argparse.Namespace,
                    dist_url: str) -> distributed.Context:
    nodes, node_rank = max(args.world_size, 1), max(args.rank, 0)
    ctx = distributed.Context(devices[local_rank], node_rank * len(devices) + local_rank, nodes * len(devices),
                              local_rank, len(devices))
    distributed.init_process_group(ctx, args.dist_backend, dist_url, args.dist_timeout)
    return ctx


def _spawned_worker(local_rank: int, devices: list[torch.device], args: argparse.Namespace, dist_url: str,
                    errors) -> None:
    """One spawned process. Its one-line error goes to the parent (``errors``), which prints the first one: a
    corrupt image in any process's share is named, once."""
    try:
        worker(spawned_context(local_rank, devices, args, dist_url), args)
    except (UserError, TrainingError) as error:
        status = 2 if isinstance(error, UserError) else 1
        errors.put((status, f"error: {one_line(error)}"))
        sys.exit(status)
    except KeyboardInterrupt:  # a second Ctrl-C; torch's wrapper would report it as success
        sys.exit(130)


def spawn(devices: list[torch.device], args: argparse.Namespace, dist_url: str) -> None:
    """One process per device, meeting at ``dist_url``; SIGTERM is passed on to them, Ctrl-C reaches them from the
    terminal."""
    errors = mp.get_context("spawn").SimpleQueue()
    context = mp.start_processes(_spawned_worker, args=(devices, args, dist_url, errors), nprocs=len(devices),
                                 join=False, start_method="spawn")

    def forward(signum, frame):
        for process in context.processes:
            if process.is_alive():
                os.kill(process.pid, signum)

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
                signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN)}
    try:
        while not context.join():
            pass
    except (mp.ProcessExitedException, mp.ProcessRaisedException) as error:  # join() has stopped the others
        if not errors.empty():  # a process's own error; the others may have failed after it, waiting for it
            status, message = errors.get()
        else:  # killed by a signal, or an unexpected exception (its traceback is the message)
            exited = isinstance(error, mp.ProcessExitedException) and error.exit_code and error.exit_code > 0
            status = error.exit_code if exited else 1
            message = f"error: {error}; the other processes were stopped; continue with --resume auto"
        print(message, file=sys.stderr, flush=True)
        raise SystemExit(status) from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def worker(ctx: distributed.Context, args: argparse.Namespace) -> dict[str, Any]:
    """One process of the job: resolve the run once, set it up, then evaluate, export the weights, or fit."""
    if ctx.device.type == "cuda":  # --gpu 3: AMP's bf16 check, Triton and pinned memory must look at GPU 3
        torch.cuda.set_device(ctx.device)
    lock = None
    try:
        checkpoint = find_checkpoint(args, ctx)
        spec = resolve_run(args, checkpoint, ctx)
        if not (args.evaluate or args.save_weights):
            lock = lock_run_folder(spec.run_dir, ctx)
        run = set_up(args, spec, checkpoint, ctx)
        if args.evaluate:
            return evaluate_checkpoint(run, checkpoint, args)
        state = build_train_state(run, checkpoint, args)
        if args.save_weights:
            return save_weights(state.model, args.save_weights, run.log)
        del checkpoint  # its tensors are in the model and optimizer now (else ~0.5 GB per process for R101 + EMA)
        return fit(run, state, args)
    finally:
        if lock is not None:
            lock.release()
        distributed.cleanup()


# ---------------------------------------------------------------------------------------------------------
# The phases of a process: which checkpoint, which run, set-up, then evaluation, weights or training.
# ---------------------------------------------------------------------------------------------------------

def find_checkpoint(args: argparse.Namespace, ctx: distributed.Context) -> LoadedCheckpoint | None:
    """The checkpoint ``--resume`` names: a file, the newest readable one of a run folder, or with 'auto' this
    run's folder when it has one (preemptible jobs, and by default workers that torchrun restarted); None to
    start afresh. A worker that torchrun restarted continues from its run folder's newest readable checkpoint
    whenever that is further along than the file ``--resume`` names. Rank 0 alone looks at the filesystem and
    decides (a node-local --ckpt or a stale NFS cache cannot make the processes disagree); every process then
    reads the file it chose, and an error on any process stops all of them."""
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    path = args.resume or ("auto" if restarted else "")  # a file or a run folder
    if not path:
        return None
    chosen = distributed.agree_on_errors(lambda: choose_checkpoint(path, args, restarted) if ctx.is_main else None)
    path, listed = distributed.broadcast_object((chosen.path, chosen.listed) if chosen else (None, {}))
    if path is None:
        return None
    return distributed.agree_on_errors(lambda: chosen or LoadedCheckpoint(path, read_checkpoint(path), listed))


def choose_checkpoint(path: str, args: argparse.Namespace, restarted: bool) -> LoadedCheckpoint | None:
    """Rank 0's choice for ``find_checkpoint``, read."""
    if path == "auto":
        path = run_folder(args.ckpt, identify(None, args), args.seed)
        if not any(os.path.isfile(os.path.join(path, name)) for name in RESUME_CANDIDATES):
            return None
    if os.path.isdir(path):
        found = newest_valid_checkpoint(path)
        if found is None:
            raise UserError(f"no readable checkpoint in {path} (looked for {', '.join(RESUME_CANDIDATES)}); "
                            "move damaged files away to start a new run there")
        return LoadedCheckpoint(*found)
    listed = verify_manifest(path) if os.path.isfile(path) else {}
    if listed.get("sha256"):
        print(f"=> {path}: sha256 matches the manifest")
    checkpoint = LoadedCheckpoint(path, read_checkpoint(path), listed)
    if restarted:  # the run this file started may have saved further since
        folder = run_folder(args.ckpt, identify(checkpoint, args), args.seed)
        found = newest_valid_checkpoint(folder) if os.path.isdir(folder) else None
        if found is not None and progress_of(found[1]) > progress_of(checkpoint.content):
            print(f"=> restarted worker: continuing from {found[0]}, further along than --resume {path}")
            return LoadedCheckpoint(*found)
    return checkpoint


def identify(checkpoint: LoadedCheckpoint | None, args: argparse.Namespace) -> networks.NetworkSpec:
    """The network: the flags, then the checkpoint's manifest row, then what the checkpoint itself says
    (``networks.identify_network``)."""
    listed = checkpoint.listed if checkpoint else {}
    param = args.attention_param
    try:
        if param is None and listed.get("attention_param"):
            param = float(listed["attention_param"])
        return networks.identify_network(checkpoint.content if checkpoint else None,
                                         args.arch or listed.get("arch") or None,
                                         args.attention_type or listed.get("attention_type") or None, param,
                                         source=checkpoint.path if checkpoint else "")
    except ValueError as error:
        raise UserError(str(error)) from None


def resolve_run(args: argparse.Namespace, checkpoint: LoadedCheckpoint | None, ctx: distributed.Context) -> RunSpec:
    """Network, seed and run folder, decided once (a run without --seed draws one, the same on every process;
    one of ours resumes with its own)."""
    network = identify(checkpoint, args)
    seed = args.seed
    if seed is None:
        seed = checkpoint.get("seed") if checkpoint and checkpoint.ours else None
    if seed is None:
        seed = distributed.broadcast_int(random.randrange(2 ** 31), ctx.device)
    return RunSpec(network.arch, network.attention_type, network.attention_param, seed,
                   deterministic=args.seed is not None, run_dir=run_folder(args.ckpt, network, args.seed))


def lock_run_folder(run_dir: str, ctx: distributed.Context) -> RunLock | None:
    """Rank 0 takes the run folder's lock for the job (``training.lock``); a folder another live job holds stops
    every process with one line naming the holder."""
    lock, refused = None, None
    if ctx.is_main:
        lock = RunLock(run_dir, job_id())
        try:
            lock.acquire()
        except UserError as error:
            lock, refused = None, str(error)
    refused = distributed.broadcast_object(refused)
    if refused:
        raise UserError(refused)
    return lock


@dataclass
class Run:
    """A set-up process: its data, model (on the device, unwrapped), step options and logs."""

    spec: RunSpec
    data: Data
    model: nn.Module
    options: StepOptions
    log: RunLog
    cost: networks.Complexity | None  # params and FLOPs, on rank 0


def set_up(args: argparse.Namespace, spec: RunSpec, checkpoint: LoadedCheckpoint | None,
           ctx: distributed.Context) -> Run:
    """Seed, data, run folder and logs, the model on the device, and how steps run."""
    seed_everything(spec.seed, spec.deterministic)
    set_tf32(not args.no_tf32)
    if args.batch_size % (ctx.world_size * args.accum_steps):
        raise UserError(f"-b {args.batch_size} does not split evenly over {ctx.world_size} processes"
                        + (f" x {args.accum_steps} micro-batches (--accum-steps)" if args.accum_steps > 1 else ""))
    if args.accum_steps > 1 and args.batch_size // (ctx.world_size * args.accum_steps) < 2:
        raise UserError(f"-b {args.batch_size} over {ctx.world_size} process(es) x {args.accum_steps} micro-batches "
                        "leaves 1 image per micro-batch, and BatchNorm needs at least 2: lower --accum-steps")
    if args.sync_bn and ctx.world_size > 1 and ctx.device.type != "cuda":
        raise UserError("--sync-bn runs on GPUs only (torch's SyncBatchNorm has no CPU implementation); leave it out "
                        "on the CPU")
    batch_per_process = args.batch_size // ctx.world_size
    data = build_data(args, ctx.world_size, ctx.rank, spec.seed, batch_per_process,
                      math.ceil(args.workers / ctx.local_world_size), pin_memory=ctx.device.type == "cuda")
    if checkpoint and checkpoint.ours and checkpoint.get("classes") not in (None, data.classes):
        raise UserError(f"{checkpoint.path} was trained on other classes than {args.data}'s "
                        f"(first ones: {checkpoint.get('classes')[:3]} vs {data.classes[:3]})")
    if ctx.is_main:
        os.makedirs(spec.run_dir, exist_ok=True)
    log = RunLog(spec.run_dir, ctx.is_main, tensorboard=not (args.evaluate or args.save_weights))
    model = networks.create_net(spec.arch, spec.attention_type, spec.attention_param, len(data.classes),
                                simam_impl=args.simam_impl)
    cost = None
    if ctx.is_main:
        with torch.random.fork_rng(devices=[]):
            cost = networks.measure_complexity(model, args.val_crop_size)
        log.header([f"Network - {spec.arch}", f"Attention Module - {spec.attention_name}",
                    f"Params - {cost.params_m:.6f}M", f"FLOPs - {cost.gflops:.6f}G"])
        log.print(f"=> {spec.arch} + {spec.attention_name}, {len(data.classes)} classes: params {cost.params_m:.2f} M, "
                  f"FLOPs {cost.gflops:.2f} G at {args.val_crop_size} px | {ctx.world_size} process(es) on "
                  f"{ctx.device.type}, batch {batch_per_process} per process | run folder {spec.run_dir}")
    if args.sync_bn and not args.evaluate:  # same state dict keys: its checkpoints load into the plain model
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model.to(ctx.device, memory_format=memory_format)
    # rank 0 decides (on a CPU, --amp auto may measure): the processes must agree
    amp_dtype = distributed.broadcast_object(amp_dtype_for(args.amp, ctx.device) if ctx.is_main else None)
    if ctx.is_main and args.amp == "auto":
        log.print(f"=> {describe_amp(args.amp, ctx.device)}")
    simam_kernels = networks.get_simam_implementation(model)  # None: no SimAM
    tf32 = "" if ctx.device.type != "cuda" else " (fp32 without TF32)" if args.no_tf32 else " (TF32 for fp32 math)"
    log.print(f"=> precision {str(amp_dtype).replace('torch.', '') if amp_dtype else 'fp32'}{tf32}, "
              f"{'channels_last' if args.channels_last else 'contiguous'}, "
              f"{'torch.compile' if args.compile else 'eager'}, {args.input_pipeline} input pipeline"
              + (f", SimAM kernels: {simam_kernels}, {networks.fused_pairs(model)} SimAM + BatchNorm pairs fused"
                 if simam_kernels else ""))
    mixer = None
    if args.mixup_alpha or args.cutmix_alpha:
        mixer = BatchMixer(len(data.classes), args.mixup_alpha, args.cutmix_alpha, spec.seed)
    options = StepOptions(ctx, nn.CrossEntropyLoss(label_smoothing=args.label_smoothing), memory_format, amp_dtype,
                          args.print_freq, args.log_freq, args.max_bad_steps, progress=not args.no_progress,
                          accum_steps=args.accum_steps, mixer=mixer, tta=args.tta == "flip")
    return Run(spec, data, model, options, log, cost)


def evaluation_model(model: nn.Module, compiled: bool) -> nn.Module:
    """The model validation runs (compiled on its own with ``--compile``: its graph has no autograd)."""
    return compile_model(model) if compiled else model


def evaluate_checkpoint(run: Run, checkpoint: LoadedCheckpoint | None, args: argparse.Namespace) -> dict[str, Any]:
    """``-e``: the checkpoint's top-1/top-5 over the validation set, the release's line and an evaluation JSON."""
    if checkpoint is None:
        warnings.warn("-e without --resume evaluates a randomly initialised model")
    else:
        load_model_weights(run, checkpoint, args.eval_ema)
    metrics = evaluate(evaluation_model(run.model, args.compile), run.data.val_loader, run.options, run.log)
    result = {
        "arch": run.spec.arch, "attention_type": run.spec.attention_type, "attention_param": run.spec.attention_param,
        "checkpoint": checkpoint.path if checkpoint else None, "epoch": checkpoint.get("epoch") if checkpoint else None,
        "top1": metrics["top1"], "top5": metrics["top5"], "loss": metrics["loss"], "n_images": metrics["count"],
        "bad_images": metrics["bad_images"],
        "params_m": run.cost.params_m if run.cost else None, "gflops": run.cost.gflops if run.cost else None,
        "val_resize_size": args.val_resize_size, "val_crop_size": args.val_crop_size, "data": args.data,
        "tta": args.tta, "weights": "ema" if args.eval_ema else "model",
    }
    if run.log.enabled:
        n_val = len(run.data.val_loader.dataset)
        assert metrics["count"] + metrics["bad_images"] == n_val, (metrics["count"], metrics["bad_images"], n_val)
        run.log.print(final_line(metrics), to_file=True)
        stem = os.path.basename(checkpoint.path if checkpoint else "random-init").split(".")[0]
        json_path = args.eval_json or os.path.join(run.spec.run_dir, f"eval_{stem}.json")
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


def build_train_state(run: Run, checkpoint: LoadedCheckpoint | None, args: argparse.Namespace) -> TrainState:
    """Optimizer, schedule, gradient scaler and weight average for the model, restored from the checkpoint when
    there is one."""
    optimizer = build_optimizer(run.model, **optimizer_kwargs(args))
    iterations_per_epoch = len(run.data.train_loader)
    ema = None
    if args.model_ema:
        ema = build_ema(run.model, args.model_ema_decay, args.model_ema_steps, args.batch_size, args.epochs,
                        args.warmup_epochs)
    state = TrainState(run.model, optimizer, build_scheduler(optimizer, iterations_per_epoch, **scheduler_kwargs(args)),
                       torch.amp.GradScaler(run.options.device.type, enabled=run.options.amp_dtype == torch.float16),
                       iterations_per_epoch, epoch=args.start_epoch, ema=ema)
    if checkpoint is not None and args.save_weights and args.eval_ema:
        load_model_weights(run, checkpoint, eval_ema=True)
    elif checkpoint is not None:
        state.load_checkpoint(checkpoint, run.spec, len(run.data.classes), run.options.ctx)
        run.log.print(f"=> resumed from {checkpoint.path} at epoch {state.epoch}"
                      + (f", iteration {state.iteration}" if state.iteration else ""), to_file=True)
    return state


def save_weights(model: nn.Module, path: str, log: RunLog) -> dict[str, Any]:
    """``--save_weights``: the weights alone (CPU, no 'module.' prefix) as ``{'state_dict': ...}``."""
    if log.enabled:
        atomic_save({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}}, path)
        log.print(f"=> saved weights to {path}")
    return {"saved_weights": path}


def fit(run: Run, state: TrainState, args: argparse.Namespace) -> dict[str, Any]:
    """Train from ``state`` to ``--epochs``, validating and saving after every epoch; a stop request saves where
    the run is. Returns the last epoch's figures."""
    ctx, spec, log = run.options.ctx, run.spec, run.log
    flatten_buffers(run.model)  # the non-finite guard then saves and restores them in one operation per dtype
    train_model = run.model
    if ctx.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            run.model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    if args.compile:
        train_model = compile_model(train_model)
    eval_model = evaluation_model(run.model, args.compile)
    eval_ema = evaluation_model(state.ema.module, args.compile) if state.ema is not None else None
    latest = os.path.join(spec.run_dir, LATEST)
    if ctx.is_main:
        remove_partial_saves(spec.run_dir)
        save_config(args, os.path.join(spec.run_dir, "config.yaml"))
        log.forget_epochs_from(state.epoch)

    def save(best: bool = False) -> None:
        rng_per_rank = capture_rng_per_process(ctx.device)  # every process takes part
        if ctx.is_main:
            save_checkpoint(state.to_checkpoint(spec, run.data.classes, recipe_of(args), rng_per_rank), spec.run_dir,
                            best=best)

    def save_inside_epoch() -> None:
        started = time.perf_counter()
        save()
        log.print(f"=> saved {latest} at epoch {state.epoch}, iteration {state.iteration} "
                  f"in {time.perf_counter() - started:.2f} s", to_file=True)

    checkpoints = IntervalCheckpoints(save_inside_epoch, args.checkpoint_interval, args.checkpoint_every_steps)
    result: dict[str, Any] = {}
    with StopRequest() as stop:
        while state.epoch < args.epochs:
            epoch = state.epoch
            size_of_epoch = run.data.train_loader.sampler.size_of_epoch
            if size_of_epoch is not None:
                log.print(f"=> epoch {epoch}: training crops of {size_of_epoch(epoch)} px", to_file=True)
            train = train_one_epoch(train_model, run.data.train_loader, state, run.options, log, stop, checkpoints)
            if train["stopped"]:
                save()
                log.print(f"=> stopped by {stop.signal_name or 'a signal on another process'} at epoch {epoch}, "
                          f"iteration {state.iteration}; saved {latest}; continue with --resume {latest}", to_file=True)
                return {"stopped": True, "epoch": epoch, "iteration": state.iteration, "checkpoint": latest}
            broadcast_buffers(run.model)  # BN running stats: evaluate what rank 0 saves
            val = evaluate(eval_model, run.data.val_loader, run.options, log)
            log.print(final_line(val), to_file=True)
            result = {"epoch": epoch, "lr": train["lr"], "train_loss": train["loss"], "train_top1": train["top1"],
                      "train_top5": train["top5"], "val_loss": val["loss"], "val_top1": val["top1"],
                      "val_top5": val["top5"], "epoch_time_s": train["time_s"], "images_per_s": train["images_per_s"],
                      "nonfinite_steps": train["nonfinite_steps"],
                      "bad_images": train["bad_images"] + val["bad_images"]}
            scores = {"model": val["top1"]}
            if eval_ema is not None:
                broadcast_buffers(state.ema)
                val_ema = evaluate(eval_ema, run.data.val_loader, run.options, log)
                log.print(f"EMA {final_line(val_ema)}", to_file=True)
                result.update(val_loss_ema=val_ema["loss"], val_top1_ema=val_ema["top1"], val_top5_ema=val_ema["top5"])
                scores["ema"] = val_ema["top1"]
            best_of = max(scores, key=scores.get)  # the model on a tie
            is_best = scores[best_of] > state.best_acc
            if is_best:
                state.best_acc, state.best_of = scores[best_of], best_of
            log.epoch(result)
            state.epoch, state.iteration, state.sums = epoch + 1, 0, None
            save(best=is_best)
            # agreed: a signal that reached rank 0 alone while it saved must stop the others too
            if distributed.any_process(stop.requested, ctx.device):
                log.print(f"=> stopped by {stop.signal_name or 'a signal on another process'} after epoch {epoch}; "
                          f"continue with --resume {latest}", to_file=True)
                return {**result, "stopped": True, "best_acc": state.best_acc}
    best = f"{state.best_acc:.3f}" + (" (EMA)" if state.best_of == "ema" else "")
    log.print(f"=> done: best Acc@1 {best}; checkpoints {latest} and "
              f"{os.path.join(spec.run_dir, BEST)}; logs log.txt and metrics.jsonl in {spec.run_dir}; "
              f"curves: tensorboard --logdir {spec.run_dir}")
    log.close()
    return {**result, "best_acc": state.best_acc, "run_dir": spec.run_dir}


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def broadcast_buffers(model: nn.Module) -> None:
    if dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def final_line(metrics: dict[str, float]) -> str:
    """The release's evaluation line."""
    return f"----------- Acc@1 {metrics['top1']:.3f} Acc@5 {metrics['top5']:.3f} -----------"


def cli(argv: list[str] | None = None) -> int:
    """Command-line entry: bad input is one line on stderr and exit status 2, never a traceback."""
    return exit_status(lambda: main(parse_with_config(get_args_parser(), argv)))


if __name__ == "__main__":
    sys.exit(cli())
