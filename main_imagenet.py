#!/usr/bin/env python
"""Train or evaluate ImageNet CNNs with SimAM (or SE, CBAM, ECA, SRM) attention.

The paper's commands work as they are:

    python main_imagenet.py DATA --gpu 0,1,2,3 --epochs 100 -j 20 -a resnet18 --attention_type simam --attention_param 0.1
    python main_imagenet.py DATA --gpu 0,1,2,3 -j 20 -a resnet18 -e --resume PATH.pth
    torchrun --nnodes 2 --nproc_per_node 8 ... main_imagenet.py DATA --config configs/resnet50_simam.yaml

``--gpu 0,1,2,3`` starts one DistributedDataParallel process per GPU; under torchrun each process takes
its place from the environment; without CUDA everything runs on the CPU (gloo when distributed).
The flow below reads top to bottom: main -> worker -> run -> train_one_epoch / evaluate.
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
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from tqdm import tqdm

import networks
from training import distributed
from training.checkpoint import (BEST, LATEST, RESUME_CANDIDATES, atomic_save, capture_rng_per_process, identify_layouts,
                                 load_weights, newest_valid_checkpoint, read_checkpoint, remove_partial_saves,
                                 restore_rng, rng_of_process, save_checkpoint, verify_manifest, weights_of)
from training.config import parse_with_config, recipe_of, save_config
from training.data import build_data, skipped_images
from training.errors import TrainingError, UserError, one_line
from training.metrics import RunLog, RunningSums, averages_of, progress_line, show_progress
from training.optim import NonFiniteGuard, build_optimizer, load_optimizer_state, take_found_inf
from training.performance import AMP_CHOICES, INPUT_PIPELINES, amp_dtype_for, to_device
from training.schedule import build_scheduler
from training.signals import StopRequest

CHECKPOINT_FORMAT = "simam-imagenet/1"
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
             "else start); with -e, the checkpoint to evaluate")
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
        help="seed for initialisation, data order and augmentation (appended to the run folder name)")
    arg("--gpu", default=None, type=str,
        help="GPU ids to use, e.g. 0,1,2,3 (one process per GPU), or 'cpu' (default: GPU 0 if CUDA is available, else CPU)")
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
        help="mixed precision; fp16 uses a gradient scaler; auto: bf16 where the device has it natively, "
             "else fp16 on CUDA, else off")
    arg("--channels-last", action="store_true", help="channels_last memory format for the model and inputs")
    arg("--compile", action="store_true", help="torch.compile the model (the first steps are slower while it compiles)")
    arg("--input-pipeline", default="pil", choices=INPUT_PIPELINES,
        help="pil: torchvision's PIL transforms to normalised floats (the release's); uint8: the same "
             "augmentation, faster, as uint8 batches normalised on the device")
    arg("--simam-impl", default=None, choices=networks.SIMAM_IMPLEMENTATIONS,
        help="SimAM kernels: auto (compiled where torch.compile can build them, else eager), compiled, eager "
             "(both memory-efficient, same values), or reference (the paper's formula with plain autograd) "
             "(default: $SIMAM_IMPL, else auto)")
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
    args.dist_url = args.dist_url or f"tcp://127.0.0.1:{distributed.free_port()}"
    if len(devices) == 1:
        return worker(spawned_context(0, devices, args), args)
    spawn(devices, args)
    return None


def check_args(args: argparse.Namespace) -> None:
    """Reject bad flag values before any process starts (one line each)."""
    for name in ("epochs", "batch_size", "print_freq", "log_freq", "train_crop_size", "val_resize_size", "val_crop_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("workers", "start_epoch", "warmup_epochs", "lr", "weight_decay", "momentum", "max_bad_steps"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must not be negative, got {getattr(args, name)}")
    if not 0.0 <= args.label_smoothing < 1.0:
        raise UserError(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
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


def torchrun_context(args: argparse.Namespace) -> distributed.Context:
    env = os.environ
    rank, world_size, local_rank = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])
    local_world_size = int(env.get("LOCAL_WORLD_SIZE", world_size))
    if torch.cuda.is_available() and (args.gpu or "").lower() != "cpu":
        devices = distributed.parse_gpus(args.gpu) if args.gpu else None
        if devices is not None and local_rank >= len(devices):
            raise UserError(f"--gpu {args.gpu} lists {len(devices)} GPUs but torchrun started {local_world_size} per node")
        device = devices[local_rank] if devices else torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    ctx = distributed.Context(device, rank, world_size, local_rank, local_world_size)
    distributed.init_process_group(ctx, args.dist_backend, "env://", args.dist_timeout)
    return ctx


def spawned_context(local_rank: int, devices: list[torch.device], args: argparse.Namespace) -> distributed.Context:
    nodes, node_rank = max(args.world_size, 1), max(args.rank, 0)
    ctx = distributed.Context(devices[local_rank], node_rank * len(devices) + local_rank, nodes * len(devices),
                              local_rank, len(devices))
    distributed.init_process_group(ctx, args.dist_backend, args.dist_url, args.dist_timeout)
    return ctx


def _spawned_worker(local_rank: int, devices: list[torch.device], args: argparse.Namespace, errors) -> None:
    """One spawned process. Its one-line error goes to the parent (``errors``), which prints the first one: a
    corrupt image in any process's share is named, once."""
    try:
        worker(spawned_context(local_rank, devices, args), args)
    except (UserError, TrainingError) as error:
        errors.put(f"error: {one_line(error)}")
        sys.exit(2 if isinstance(error, UserError) else 1)
    except KeyboardInterrupt:  # a second Ctrl-C; torch's wrapper would report it as success
        sys.exit(130)


def spawn(devices: list[torch.device], args: argparse.Namespace) -> None:
    """One process per device; SIGTERM is passed on to them, Ctrl-C reaches them from the terminal."""
    errors = mp.get_context("spawn").SimpleQueue()
    context = mp.start_processes(_spawned_worker, args=(devices, args, errors), nprocs=len(devices), join=False,
                                 start_method="spawn")

    def forward(signum, frame):
        for process in context.processes:
            if process.is_alive():
                os.kill(process.pid, signum)

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
                signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN)}
    try:
        while not context.join():
            pass
    except mp.ProcessExitedException as error:  # join() has stopped the other processes
        if not errors.empty():
            print(errors.get(), file=sys.stderr, flush=True)
        else:
            print(f"error: {error}; the other processes were stopped; continue with --resume auto",
                  file=sys.stderr, flush=True)
        raise SystemExit(error.exit_code if error.exit_code and error.exit_code > 0 else 1) from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def worker(ctx: distributed.Context, args: argparse.Namespace) -> dict[str, Any]:
    if ctx.device.type == "cuda":  # --gpu 3: AMP's bf16 check, Triton and pinned memory must look at GPU 3
        torch.cuda.set_device(ctx.device)
    previous = networks.get_simam_implementation()
    if args.simam_impl:  # per process: spawned processes start from the environment's choice
        networks.set_simam_implementation(args.simam_impl)
    try:
        return run(ctx, args)
    finally:
        networks.set_simam_implementation(previous)
        distributed.cleanup()


# ---------------------------------------------------------------------------------------------------------
# One process: data, model, checkpoint, then evaluation or the epoch loop.
# ---------------------------------------------------------------------------------------------------------

def run(ctx: distributed.Context, args: argparse.Namespace) -> dict[str, Any]:
    device = ctx.device
    checkpoint, checkpoint_path = None, None
    if args.resume == "auto":  # continue this run's folder if it has checkpoints (preemptible jobs)
        choose_network(args, None, None)
        args.resume = run_folder(args) if any(os.path.isfile(os.path.join(run_folder(args), name))
                                              for name in RESUME_CANDIDATES) else ""
    if args.resume and os.path.isdir(args.resume):
        found = newest_valid_checkpoint(args.resume, report=print if ctx.is_main else lambda line: None)
        if found is None:
            raise UserError(f"no readable checkpoint in {args.resume} (looked for {', '.join(RESUME_CANDIDATES)}); "
                            "move damaged files away to start a new run there")
        checkpoint_path, checkpoint = found
    elif args.resume:
        checkpoint_path = args.resume
        if os.path.isfile(checkpoint_path) and verify_manifest(checkpoint_path) and ctx.is_main:
            print(f"=> {checkpoint_path}: sha256 matches the manifest")
        checkpoint = read_checkpoint(checkpoint_path)
    ours = isinstance(checkpoint, dict) and checkpoint.get("format") == CHECKPOINT_FORMAT
    choose_network(args, checkpoint, checkpoint_path)

    seed = args.seed
    if seed is None:
        seed = checkpoint["seed"] if ours else distributed.broadcast_int(random.randrange(2 ** 31), device)
    seed_everything(seed, deterministic=args.seed is not None)

    if args.batch_size % ctx.world_size:
        raise UserError(f"-b {args.batch_size} does not split evenly over {ctx.world_size} processes")
    batch_per_process = args.batch_size // ctx.world_size
    workers = math.ceil(args.workers / ctx.local_world_size)
    data = build_data(args, ctx.world_size, ctx.rank, seed, batch_per_process, workers,
                      pin_memory=device.type == "cuda")
    num_classes = len(data.classes)

    run_dir = run_folder(args)
    if ctx.is_main:
        os.makedirs(run_dir, exist_ok=True)
        remove_partial_saves(run_dir)
    if ours and checkpoint.get("classes") not in (None, data.classes):
        raise UserError(f"{checkpoint_path} was trained on other classes than {args.data}'s "
                        f"(first ones: {checkpoint['classes'][:3]} vs {data.classes[:3]})")
    log = RunLog(run_dir, ctx.is_main, tensorboard=not args.evaluate)
    model = build_model(args, num_classes)
    cost = None
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    if ctx.is_main:
        with torch.random.fork_rng(devices=[]):
            cost = networks.measure_complexity(model, args.val_crop_size)
        log.header([f"Network - {args.arch}", f"Attention Module - {attention_name(args)}",
                    f"Params - {cost.params_m:.6f}M", f"FLOPs - {cost.gflops:.6f}G"])
        log.print(f"=> {args.arch} + {attention_name(args)}, {num_classes} classes: params {cost.params_m:.2f} M, "
                  f"FLOPs {cost.gflops:.2f} G at {args.val_crop_size} px | {ctx.world_size} process(es) on "
                  f"{device.type}, batch {batch_per_process} per process | run folder {run_dir}")
    model.to(device, memory_format=memory_format)
    amp_dtype = amp_dtype_for(args.amp, device)
    eval_model = torch.compile(model, dynamic=False) if args.compile else model
    log.print(f"=> precision {str(amp_dtype).replace('torch.', '') if amp_dtype else 'fp32'}, "
              f"{'channels_last' if args.channels_last else 'contiguous'}, "
              f"{'torch.compile' if args.compile else 'eager'}, {args.input_pipeline} input pipeline"
              + (f", SimAM kernels: {networks.get_simam_implementation()}" if args.attention_type == "simam" else ""))

    if args.evaluate:
        if checkpoint is None:
            warnings.warn("-e without --resume evaluates a randomly initialised model")
        else:
            load_weights(model, weights_of(checkpoint, checkpoint_path), checkpoint_path, args.arch,
                         args.attention_type, num_classes)
        result = evaluate(eval_model, data.val_loader, device, memory_format, amp_dtype, ctx, args, log)
        return report_evaluation(result, args, checkpoint, checkpoint_path, cost, len(data.val_loader.dataset), run_dir, log)

    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    optimizer = build_optimizer(model, args.lr, args.momentum, args.weight_decay)
    iters_per_epoch = len(data.train_loader)
    scheduler = build_scheduler(optimizer, args, iters_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    start = {"epoch": args.start_epoch, "iteration": 0, "best_acc": 0.0, "sums": None}
    if checkpoint is not None:
        start = resume(checkpoint, checkpoint_path, ours, model, optimizer, scheduler, scaler, args, num_classes,
                       iters_per_epoch, ctx)
        log.print(f"=> resumed from {checkpoint_path} at epoch {start['epoch']}"
                  + (f", iteration {start['iteration']}" if start["iteration"] else ""), to_file=True)
    if args.save_weights:
        if ctx.is_main:
            atomic_save({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}}, args.save_weights)
            log.print(f"=> saved weights to {args.save_weights}")
        return {"saved_weights": args.save_weights}

    train_model = model
    if ctx.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        train_model = torch.compile(train_model, dynamic=False)  # a smaller last batch: its own graph
    if ctx.is_main:
        save_config(args, os.path.join(run_dir, "config.yaml"))
        log.forget_epochs_from(start["epoch"])

    best_acc, result = start["best_acc"], {}
    with StopRequest() as stop:
        for epoch in range(start["epoch"], args.epochs):
            start_iteration = start["iteration"] if epoch == start["epoch"] else 0
            train_stats = train_one_epoch(train_model, data.train_loader, criterion, optimizer, scheduler, scaler,
                                          epoch, start_iteration, start["sums"] if start_iteration else None,
                                          memory_format, amp_dtype, ctx, args, log, stop)
            state = dict(epoch=epoch, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                         args=args, seed=seed, classes=data.classes, best_acc=best_acc,
                         iterations_per_epoch=iters_per_epoch)
            state["rng_per_rank"] = capture_rng_per_process(device)  # every process takes part
            if train_stats["stopped"]:
                path = os.path.join(run_dir, LATEST)
                if ctx.is_main:
                    save_checkpoint(checkpoint_state(iteration=train_stats["iterations"], sums=train_stats["sums"],
                                                     **state), run_dir)
                log.print(f"=> stopped by {stop.signal_name or 'a signal on another process'} at epoch {epoch}, "
                          f"iteration {train_stats['iterations']}; saved {path}; continue with --resume {path}",
                          to_file=True)
                return {"stopped": True, "epoch": epoch, "iteration": train_stats["iterations"],
                        "checkpoint": path}

            broadcast_buffers(model)  # BN running stats: evaluate what rank 0 saves
            val = evaluate(eval_model, data.val_loader, device, memory_format, amp_dtype, ctx, args, log)
            log.print(final_line(val), to_file=True)
            is_best = val["top1"] > best_acc
            best_acc = max(val["top1"], best_acc)
            result = {"epoch": epoch, "lr": train_stats["lr"], "train_loss": train_stats["loss"],
                      "train_top1": train_stats["top1"], "train_top5": train_stats["top5"],
                      "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"],
                      "epoch_time_s": train_stats["time_s"], "images_per_s": train_stats["images_per_s"],
                      "nonfinite_steps": train_stats["nonfinite_steps"],
                      "bad_images": train_stats["bad_images"] + val["bad_images"]}
            log.epoch(result)
            state["rng_per_rank"] = capture_rng_per_process(device)
            if ctx.is_main:
                state.update(epoch=epoch + 1, best_acc=best_acc)
                save_checkpoint(checkpoint_state(iteration=0, sums=None, **state), run_dir, best=is_best)
            if stop.requested:
                log.print(f"=> stopped by {stop.signal_name} after epoch {epoch}; "
                          f"continue with --resume {os.path.join(run_dir, LATEST)}", to_file=True)
                return {**result, "stopped": True, "best_acc": best_acc}
    log.print(f"=> done: best Acc@1 {best_acc:.3f}; checkpoints {os.path.join(run_dir, LATEST)} and "
              f"{os.path.join(run_dir, BEST)}; logs log.txt and metrics.jsonl in {run_dir}; "
              f"curves: tensorboard --logdir {run_dir}")
    log.close()
    return {**result, "best_acc": best_acc, "run_dir": run_dir}


def choose_network(args: argparse.Namespace, checkpoint: Any, path: str | None) -> None:
    """Fill in arch / attention not given on the command line or in the config: from our checkpoint's
    record, from the release's ``arch`` field and the weights' key layout, or the defaults."""
    recorded = checkpoint if isinstance(checkpoint, dict) else {}
    inferred = []
    if checkpoint is not None and (args.arch is None or args.attention_type is None) and "attention_type" not in recorded:
        layouts = identify_layouts(weights_of(checkpoint, path))
        wanted = args.arch or recorded.get("arch")
        inferred = [pair for pair in layouts if wanted in (None, pair[0])]
    if args.arch is None:
        args.arch = recorded.get("arch") or (inferred[0][0] if len(inferred) == 1 else "resnet18")
    if args.attention_type is None:
        if "attention_type" in recorded:
            args.attention_type = recorded["attention_type"]
        else:
            args.attention_type = inferred[0][1] if len(inferred) == 1 else "none"
    args.arch, args.attention_type = args.arch.lower(), args.attention_type.lower()
    if args.attention_param is None and recorded.get("attention_type") == args.attention_type:
        args.attention_param = recorded.get("attention_param")
    if args.attention_param is None:
        args.attention_param = networks.ATTENTIONS.get(args.attention_type).default_param


def attention_name(args: argparse.Namespace) -> str:
    return networks.describe_attention(args.attention_type, args.attention_param)


def run_folder(args: argparse.Namespace) -> str:
    """``<ckpt>/imagenet-<arch>[-<attention>-param<p>][-seed<s>]``, as the release names it."""
    name = f"imagenet-{args.arch}"
    if args.attention_type != "none":
        name += f"-{args.attention_type}"
        if args.attention_param is not None and networks.ATTENTIONS.get(args.attention_type).param_name:
            name += f"-param{float(args.attention_param)}"
    if args.seed is not None:
        name += f"-seed{args.seed}"
    return os.path.join(args.ckpt, name)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def build_model(args: argparse.Namespace, num_classes: int) -> nn.Module:
    try:
        return networks.create_net(args.arch, args.attention_type, args.attention_param, num_classes)
    except ValueError as error:
        raise UserError(str(error)) from None


def resume(checkpoint: Any, path: str, ours: bool, model: nn.Module, optimizer, scheduler, scaler,
           args: argparse.Namespace, num_classes: int, iters_per_epoch: int,
           ctx: distributed.Context) -> dict[str, Any]:
    """Restore the weights and, as far as the file has them, the training state; returns where to start.

    A release file gives the weights, the epoch, best_acc and its SGD state (momentum); the schedule is placed
    at its epoch. Ours also give the schedule, the gradient scaler (when both runs use one), every process's
    RNG states and the position inside an epoch.
    """
    load_weights(model, weights_of(checkpoint, path), path, args.arch, args.attention_type, num_classes)
    if not isinstance(checkpoint, dict) or "epoch" not in checkpoint:
        return {"epoch": args.start_epoch, "iteration": 0, "best_acc": 0.0, "sums": None}
    try:
        if "optimizer" in checkpoint:
            load_optimizer_state(optimizer, checkpoint["optimizer"])
        if ours:
            scheduler.load_state_dict(checkpoint["scheduler"])
            if checkpoint["scaler"]:  # empty when saved without fp16: a new scaler starts (and the reverse is ignored)
                scaler.load_state_dict(checkpoint["scaler"])
            restore_rng(rng_of_process(checkpoint, ctx.rank, ctx.world_size), ctx.device)
        else:  # the release's file: place the per-iteration schedule at the checkpoint's epoch
            scheduler.last_epoch = checkpoint["epoch"] * iters_per_epoch - 1
            scheduler.step()
    except (ValueError, KeyError, RuntimeError) as error:
        raise UserError(f"{path}: cannot restore the training state ({one_line(error)}); "
                        "use -e to evaluate it or start a new run") from None
    iteration = checkpoint.get("iteration", 0) if ours else 0
    if iteration and checkpoint.get("iterations_per_epoch") != iters_per_epoch:
        raise UserError(f"{path} stopped inside an epoch of {checkpoint.get('iterations_per_epoch')} iterations; "
                        f"this run has {iters_per_epoch}: resume with the same data, -b and number of processes")
    return {"epoch": int(checkpoint["epoch"]), "iteration": iteration,
            "best_acc": float(checkpoint.get("best_acc", 0.0)), "sums": checkpoint.get("sums")}


def checkpoint_state(*, epoch: int, iteration: int, iterations_per_epoch: int, model: nn.Module, optimizer,
                     scheduler, scaler, args: argparse.Namespace, seed: int, classes: list[str], best_acc: float,
                     sums: list[float] | None, rng_per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    """The release's fields (epoch, arch, state_dict, best_acc, optimizer) plus all that exact resumption needs.

    ``epoch`` counts completed epochs; ``iteration`` > 0 marks a run stopped inside epoch ``epoch``.
    """
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch, "arch": args.arch, "state_dict": model.state_dict(), "best_acc": best_acc,
        "optimizer": optimizer.state_dict(),
        "iteration": iteration, "iterations_per_epoch": iterations_per_epoch,
        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
        "attention_type": args.attention_type, "attention_param": args.attention_param,
        "num_classes": len(classes), "classes": classes, "seed": seed, "sums": sums,
        "args": recipe_of(args), "rng": rng_per_rank[0], "rng_per_rank": rng_per_rank,
        "torch_version": str(torch.__version__),
    }


def broadcast_buffers(model: nn.Module) -> None:
    if dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


# ---------------------------------------------------------------------------------------------------------
# Training and evaluation loops.
# ---------------------------------------------------------------------------------------------------------

def train_one_epoch(model, loader, criterion, optimizer, scheduler, scaler, epoch: int, start_iteration: int,
                    sums_state, memory_format, amp_dtype, ctx: distributed.Context, args, log: RunLog,
                    stop: StopRequest) -> dict[str, Any]:
    """Train one epoch from ``start_iteration``; stops early (``stopped``) when a stop is requested."""
    model.train()
    device = ctx.device
    loader.sampler.set_epoch(epoch, skip=start_iteration * loader.batch_size)
    total = start_iteration + len(loader)
    sums = RunningSums(device, sums_state)
    lr = optimizer.param_groups[0]["lr"]
    bar = tqdm(total=total, initial=start_iteration, desc=f"Epoch {epoch}", dynamic_ncols=True,
               disable=not show_progress(ctx.is_main, args.no_progress))
    images_seen, started = 0, time.perf_counter()
    iteration, synced = start_iteration, None
    guard, bad_images = NonFiniteGuard(device, total), 0
    for iteration, batch in enumerate(loader, start=start_iteration):
        bad_images += report_skipped(skipped_images(batch), log)
        images, target = to_device(batch[0], batch[1], device, memory_format)
        step_lr = optimizer.param_groups[0]["lr"]
        output, loss = train_step(model, images, target, criterion, optimizer, scaler, amp_dtype, guard, iteration)
        scheduler.step()
        sums.update(torch.nan_to_num(loss.detach(), nan=0.0, posinf=0.0, neginf=0.0) * target.size(0), output, target)
        images_seen += target.size(0)
        bar.update(1)

        at_print = iteration % args.print_freq == 0 or iteration == total - 1
        if at_print:
            synced = synchronize(sums, guard, iteration, stop.requested, bad_images, device)
            check_nonfinite(synced["nonfinite_steps"], epoch, args)
        if at_print or iteration % args.log_freq == 0:
            averages = synced["averages"] if at_print else sums.averages()
            line = progress_line(f"Epoch: [{epoch}]", iteration, total, averages, f"Lr {step_lr:.4f}")
            if at_print:
                bar.set_postfix_str(line.split("\t", 1)[1].replace("\t", " "), refresh=False)
                if bar.disable:
                    log.print(line)
            if iteration % args.log_freq == 0:
                log.write(line)
        # One process checks its own flag every step; several agree at print intervals (no per-step sync).
        if stop.requested if not ctx.distributed else at_print and synced["stop"]:
            bar.close()
            return {"stopped": True, "iterations": iteration + 1, "sums": sums.state()}
    bar.close()
    elapsed = time.perf_counter() - started
    if synced is None:  # resumed after the epoch's last step
        synced = synchronize(sums, guard, total - 1, False, bad_images, device)
    stats = synced["averages"]  # the last iteration is a print interval
    images_per_s = images_seen * ctx.world_size / elapsed if elapsed > 0 else 0.0
    return {"stopped": False, "iterations": iteration + 1, "lr": lr, "loss": stats["loss"], "top1": stats["top1"],
            "top5": stats["top5"], "time_s": elapsed, "images_per_s": images_per_s,
            "nonfinite_steps": synced["nonfinite_steps"], "bad_images": synced["bad_images"]}


def synchronize(sums: RunningSums, guard: NonFiniteGuard, step: int, stop_requested: bool, bad_images: int,
                device: torch.device) -> dict[str, Any]:
    """What the processes agree on at a print interval, in one collective and one host read: the running
    averages over all processes, the epoch's non-finite steps so far (a step counts once however many processes
    saw it), whether any process was asked to stop, and the images skipped so far."""
    flags = sums.sums.new_tensor([float(stop_requested), float(bad_images)])
    values = distributed.all_reduce_sum(torch.cat([sums.packed(), flags, guard.pending(step)])).tolist()
    return {"averages": averages_of(values[:4]), "stop": values[4] > 0, "bad_images": int(values[5]),
            "nonfinite_steps": guard.add_counted(step, values[6:])}


def report_skipped(messages: list[str], log: RunLog) -> int:
    """Log the images ``--skip-bad-images`` passed over (every process warns on stderr); returns how many."""
    for message in messages:
        print(f"warning: skipped {message}", file=sys.stderr, flush=True)
        log.write(f"skipped {message}")
    return len(messages)


def total_over_processes(count: int, device: torch.device) -> int:
    return int(distributed.all_reduce_sum(torch.tensor(count, dtype=torch.int64, device=device)).item())


def check_nonfinite(bad_steps: int, epoch: int, args) -> None:
    """More than ``--max-bad-steps`` steps of this epoch with a NaN/inf loss (on any process) stop the run
    before anything is saved."""
    if bad_steps > args.max_bad_steps:
        raise TrainingError(
            f"the training loss was NaN/inf in {bad_steps} step(s) of epoch {epoch} (--max-bad-steps {args.max_bad_steps}); "
            f"stopped without saving, so the checkpoints in {run_folder(args)} are the last good ones. Lower --lr, "
            "add --warmup-epochs or check the data; --max-bad-steps N skips up to N such steps per epoch")


def train_step(model: nn.Module, images, target, criterion, optimizer, scaler, amp_dtype,
               guard: NonFiniteGuard | None = None, step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step; returns (output, loss) without reading anything back to the host. With a
    ``guard``, a step whose loss is not finite is marked as step ``step`` and one whose gradients are not
    finite makes no update."""
    with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        output = model(images)
        loss = criterion(output, target)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if guard is not None:
        guard.mark(loss, step)
        if not scaler.is_enabled():
            guard.flag_nonfinite_gradients(model, optimizer)
    scaler.step(optimizer)
    scaler.update()
    take_found_inf(optimizer)
    return output, loss


@torch.inference_mode()
def evaluate(model: nn.Module, loader, device, memory_format, amp_dtype, ctx: distributed.Context,
             args, log: RunLog) -> dict[str, float]:
    """Loss and top-1/top-5 over the whole validation set; each process evaluates its own share of the
    images and the sums are added, so every image counts exactly once whatever the number of processes."""
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    sums = RunningSums(device)
    bad_images = 0
    for batch in tqdm(loader, desc="Val", dynamic_ncols=True, leave=False,
                      disable=not show_progress(ctx.is_main, args.no_progress)):
        bad_images += report_skipped(skipped_images(batch), log)
        if len(batch[1]) == 0:  # every image of the batch was unreadable
            continue
        images, target = to_device(batch[0], batch[1], device, memory_format)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            output = model(images)
        output = output.float()
        sums.update(criterion(output, target), output, target)
    return {**sums.averages(reduce=True), "bad_images": total_over_processes(bad_images, device)}


def final_line(metrics: dict[str, float]) -> str:
    """The release's evaluation line."""
    return f"----------- Acc@1 {metrics['top1']:.3f} Acc@5 {metrics['top5']:.3f} -----------"


def report_evaluation(metrics: dict[str, float], args, checkpoint: Any, checkpoint_path: str | None, cost,
                      n_val: int, run_dir: str, log: RunLog) -> dict[str, Any]:
    """Print and log the release's final line and write the evaluation JSON (rank 0)."""
    result = {
        "arch": args.arch, "attention_type": args.attention_type, "attention_param": args.attention_param,
        "checkpoint": checkpoint_path, "epoch": checkpoint.get("epoch") if isinstance(checkpoint, dict) else None,
        "top1": metrics["top1"], "top5": metrics["top5"], "loss": metrics["loss"], "n_images": metrics["count"],
        "bad_images": metrics["bad_images"],
        "params_m": cost.params_m if cost else None, "gflops": cost.gflops if cost else None,
        "val_resize_size": args.val_resize_size, "val_crop_size": args.val_crop_size, "data": args.data,
    }
    if log.enabled:
        assert metrics["count"] + metrics["bad_images"] == n_val, (metrics["count"], metrics["bad_images"], n_val)
        log.print(final_line(metrics), to_file=True)
        stem = os.path.basename(checkpoint_path or "random-init").split(".")[0]
        json_path = args.eval_json or os.path.join(run_dir, f"eval_{stem}.json")
        if os.path.dirname(json_path):
            os.makedirs(os.path.dirname(json_path), exist_ok=True)
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
        log.print(f"=> wrote {json_path}")
        result["json"] = json_path
    return result


def cli(argv: list[str] | None = None) -> int:
    """Command-line entry: bad input is one line on stderr and exit status 2, never a traceback."""
    try:
        args = parse_with_config(get_args_parser(), argv)
        main(args)
    except UserError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    except TrainingError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(cli())
