"""One process of a job, phase by phase: the options resolved once (``resolve``), then ``worker``: find_checkpoint,
resolve_run, set_up, then evaluate_checkpoint (``training.evaluation``), save_weights or fit. The loops are in
``training.engine``; each subsystem's options live in its own module (``add_options`` and an options class)."""

from __future__ import annotations

import argparse
import math
import os
import random
import time
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

import networks

from . import distributed
from .checkpoint import (
    BEST,
    LATEST,
    RESUME_CANDIDATES,
    CheckpointOptions,
    capture_rng_per_process,
    newest_valid_checkpoint,
    progress_of,
    read_checkpoint,
    remove_partial_saves,
    save_checkpoint,
    verify_manifest,
)
from .config import recipe_of, save_config
from .data import DataOptions, InputPipeline, build_data, resized_notice
from .ema import EmaOptions, build_ema
from .engine import IntervalCheckpoints, LoopOptions, StepOptions, evaluate, train_one_epoch
from .errors import UserError
from .evaluation import EvalOptions, evaluate_checkpoint, evaluation_model, final_line, load_model_weights, save_weights
from .lock import RunLock, job_id
from .metrics import RunLog
from .mixing import BatchMixer, MixOptions
from .optim import SgdOptions, build_optimizer, flatten_buffers
from .options import Options
from .performance import PerformanceOptions, amp_dtype_for, compile_model, describe_amp, set_tf32
from .schedule import LrSchedule, build_scheduler
from .signals import StopRequest
from .state import LoadedCheckpoint, RunSpec, TrainState, run_folder


@dataclass(frozen=True)
class ModelOptions(Options):
    """The network (the checkpoint's where these leave it open), how its SimAM runs, and the run's seed."""

    arch: str | None = None  # None: resnet18, or the checkpoint's
    attention_type: str | None = None  # None: none, or the checkpoint's
    attention_param: float | None = None  # None: the attention's own
    simam_impl: str | None = None  # None: $SIMAM_IMPL, else auto
    sync_bn: bool = False
    pretrained: bool = False  # the release's flag, which had no effect
    seed: int | None = None

    def check(self) -> None:
        try:
            if self.arch is not None:
                networks.ARCHS.get(self.arch)
            if self.attention_type is not None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    networks.create_attn(self.attention_type, 64, self.attention_param)
        except ValueError as error:
            raise UserError(str(error)) from None


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and seed")
    arg = group.add_argument
    arg("-a", "--arch", metavar="ARCH", default=None,
        help=f"model architecture: {', '.join(networks.ARCHS)} (default: resnet18, or the checkpoint's with --resume)")
    arg("--attention_type", type=str, default=None,
        help=f"attention type: {', '.join(networks.ATTENTIONS)} (default: none, or the checkpoint's with --resume)")
    arg("--attention_param", type=float, default=None,
        help="attention parameter: lambda for simam (default 0.1), reduction ratio for se/cbam (default 16), "
             "kernel size for eca (default adaptive)")
    arg("--simam-impl", default=None, choices=networks.SIMAM_IMPLEMENTATIONS,
        help="how this run's SimAM modules run: auto (compiled kernels where torch.compile can build them, else "
             "eager), compiled, eager (both memory-efficient, same values), or reference (the paper's formula with "
             "plain autograd) (default: $SIMAM_IMPL, else auto)")
    arg("--sync-bn", action="store_true", help="synchronised BatchNorm over the processes (GPUs only)")
    arg("--pretrained", action="store_true",
        help="accepted for compatibility with the release, where it had no effect; ignored with a warning")
    arg("--seed", default=None, type=int,
        help="seed for initialisation, data order and augmentation (appended to the run folder name); also makes "
             "cuDNN deterministic (its benchmark mode off: slower on GPUs)")


@dataclass(frozen=True)
class Config:
    """The whole command line, resolved and checked once: each subsystem's options, and the recipe (the effective
    options as config.yaml and the checkpoints save them)."""

    loop: LoopOptions
    optimizer: SgdOptions
    checkpoints: CheckpointOptions
    mixing: MixOptions
    ema: EmaOptions
    schedule: LrSchedule
    evaluation: EvalOptions
    model: ModelOptions
    data: DataOptions
    performance: PerformanceOptions
    launch: distributed.LaunchOptions
    recipe: dict[str, Any]


# Config's option fields and their classes, in the order their checks run.
OPTION_KINDS: dict[str, type[Options]] = {
    "loop": LoopOptions, "optimizer": SgdOptions, "checkpoints": CheckpointOptions, "mixing": MixOptions,
    "ema": EmaOptions, "schedule": LrSchedule, "evaluation": EvalOptions, "model": ModelOptions, "data": DataOptions,
    "performance": PerformanceOptions, "launch": distributed.LaunchOptions,
}


def resolve(args: argparse.Namespace) -> Config:
    """Each subsystem's options from the parsed command line, range-checked (a bad value is a one-line
    ``UserError``) before any process starts."""
    options: dict[str, Any] = {name: kind.from_args(args) for name, kind in OPTION_KINDS.items()}
    options["data"] = replace(options["data"], train=not options["evaluation"].evaluate,
                              whole_batches=options["loop"].accum_steps > 1)
    if options["model"].pretrained:
        warnings.warn("--pretrained had no effect in the release and is ignored here")
    return Config(**options, recipe=recipe_of(args))


def worker(ctx: distributed.Context, config: Config) -> dict[str, Any]:
    """One process of the job: resolve the run once, set it up, then evaluate, export the weights, or fit."""
    if ctx.device.type == "cuda":  # --gpu 3: AMP's bf16 check, Triton and pinned memory must look at GPU 3
        torch.cuda.set_device(ctx.device)
    lock = None
    try:
        checkpoint = find_checkpoint(config, ctx)
        spec = resolve_run(config, checkpoint, ctx)
        if config.evaluation.trains:
            lock = lock_run_folder(spec.run_dir, ctx)
        run = set_up(config, spec, checkpoint, ctx)
        if config.evaluation.evaluate:
            result = evaluate_checkpoint(run, checkpoint)
            if config.evaluation.save_weights:  # -e --save_weights: the weights with what they were evaluated to
                result.update(save_weights(run, run.model, checkpoint, result))
            return result
        state = build_train_state(run, checkpoint)
        if config.evaluation.save_weights:
            return save_weights(run, state.model, checkpoint)
        del checkpoint  # its tensors are in the model and optimizer now (else ~0.5 GB per process for R101 + EMA)
        return fit(run, state, lock)
    finally:
        if lock is not None:
            lock.release()
        distributed.cleanup()


def find_checkpoint(config: Config, ctx: distributed.Context) -> LoadedCheckpoint | None:
    """The checkpoint ``--resume`` names: a file, the newest readable one of a run folder, or with 'auto' this
    run's folder when it has one (preemptible jobs, and by default workers that torchrun restarted); None to
    start afresh. A worker that torchrun restarted continues from its run folder's newest readable checkpoint
    whenever that is further along than the file ``--resume`` names. Rank 0 alone looks at the filesystem and
    decides (a node-local --ckpt or a stale NFS cache cannot make the processes disagree); every process then
    reads the file it chose, and an error on any process stops all of them."""
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    path = config.checkpoints.resume or ("auto" if restarted else "")  # a file or a run folder
    if not path:
        return None
    chosen = distributed.agree_on_errors(lambda: choose_checkpoint(path, config, restarted) if ctx.is_main else None)
    path, listed = distributed.broadcast_object((chosen.path, chosen.listed) if chosen else (None, {}))
    if path is None:
        return None
    return distributed.agree_on_errors(lambda: chosen or LoadedCheckpoint(path, read_checkpoint(path), listed))


def choose_checkpoint(path: str, config: Config, restarted: bool) -> LoadedCheckpoint | None:
    """Rank 0's choice for ``find_checkpoint``, read."""
    ckpt, seed = config.checkpoints.ckpt, config.model.seed
    if path == "auto":
        path = run_folder(ckpt, identify(None, config.model), seed)
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
        folder = run_folder(ckpt, identify(checkpoint, config.model), seed)
        found = newest_valid_checkpoint(folder) if os.path.isdir(folder) else None
        if found is not None and progress_of(found[1]) > progress_of(checkpoint.content):
            print(f"=> restarted worker: continuing from {found[0]}, further along than --resume {path}")
            return LoadedCheckpoint(*found)
    return checkpoint


def identify(checkpoint: LoadedCheckpoint | None, model: ModelOptions) -> networks.NetworkSpec:
    """The network: the flags, then the checkpoint's manifest row, then what the checkpoint itself says
    (``networks.identify_network``)."""
    listed = checkpoint.listed if checkpoint else {}
    param = model.attention_param
    try:
        if param is None and listed.get("attention_param"):
            param = float(listed["attention_param"])
        return networks.identify_network(checkpoint.content if checkpoint else None,
                                         model.arch or listed.get("arch") or None,
                                         model.attention_type or listed.get("attention_type") or None, param,
                                         source=checkpoint.path if checkpoint else "")
    except ValueError as error:
        raise UserError(str(error)) from None


def resolve_run(config: Config, checkpoint: LoadedCheckpoint | None, ctx: distributed.Context) -> RunSpec:
    """Network, seed and run folder, decided once (a run without --seed draws one, the same on every process;
    one of ours resumes with its own)."""
    network = identify(checkpoint, config.model)
    seed = config.model.seed
    if seed is None:
        seed = checkpoint.get("seed") if checkpoint and checkpoint.ours else None
    if seed is None:
        seed = distributed.broadcast_int(random.randrange(2 ** 31), ctx.device)
    return RunSpec(network.arch, network.attention_type, network.attention_param, seed,
                   deterministic=config.model.seed is not None,
                   run_dir=run_folder(config.checkpoints.ckpt, network, config.model.seed))


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
    """A set-up process: its options, data, model (on the device, unwrapped), step options and logs."""

    config: Config
    spec: RunSpec
    data: InputPipeline
    model: nn.Module
    options: StepOptions
    log: RunLog
    cost: networks.Complexity | None  # params and FLOPs, on rank 0


def set_up(config: Config, spec: RunSpec, checkpoint: LoadedCheckpoint | None, ctx: distributed.Context) -> Run:
    """Seed, data, run folder and logs, the model on the device, and how steps run."""
    loop, model_options, speed = config.loop, config.model, config.performance
    seed_everything(spec.seed, spec.deterministic)
    set_tf32(not speed.no_tf32)
    if loop.batch_size % (ctx.world_size * loop.accum_steps):
        raise UserError(f"-b {loop.batch_size} does not split evenly over {ctx.world_size} processes"
                        + (f" x {loop.accum_steps} micro-batches (--accum-steps)" if loop.accum_steps > 1 else ""))
    if loop.accum_steps > 1 and loop.batch_size // (ctx.world_size * loop.accum_steps) < 2:
        raise UserError(f"-b {loop.batch_size} over {ctx.world_size} process(es) x {loop.accum_steps} micro-batches "
                        "leaves 1 image per micro-batch, and BatchNorm needs at least 2: lower --accum-steps")
    if model_options.sync_bn and ctx.world_size > 1 and ctx.device.type != "cuda":
        raise UserError("--sync-bn runs on GPUs only (torch's SyncBatchNorm has no CPU implementation); leave it out "
                        "on the CPU")
    batch_per_process = loop.batch_size // ctx.world_size
    data = build_data(config.data, ctx.world_size, ctx.rank, spec.seed, batch_per_process,
                      math.ceil(config.data.workers / ctx.local_world_size), pin_memory=ctx.device.type == "cuda")
    if checkpoint and checkpoint.recorded_classes not in (None, data.classes):
        raise UserError(f"{checkpoint.path} was trained on other classes than {config.data.data}'s "
                        f"(first ones: {checkpoint.recorded_classes[:3]} vs {data.classes[:3]})")
    if ctx.is_main:
        os.makedirs(spec.run_dir, exist_ok=True)
    log = RunLog(spec.run_dir, ctx.is_main, tensorboard=config.evaluation.trains)
    model = networks.create_net(spec.arch, spec.attention_type, spec.attention_param, len(data.classes),
                                simam_impl=model_options.simam_impl)
    cost, crop = None, config.data.val_crop_size
    if ctx.is_main:
        with torch.random.fork_rng(devices=[]):
            cost = networks.measure_complexity(model, crop)
        log.header([f"Network - {spec.arch}", f"Attention Module - {spec.attention_name}",
                    f"Params - {cost.params_m:.6f}M", f"FLOPs - {cost.gflops:.6f}G"])
        log.print(f"=> {spec.arch} + {spec.attention_name}, {len(data.classes)} classes: params {cost.params_m:.2f} M, "
                  f"FLOPs {cost.gflops:.2f} G at {crop} px | {ctx.world_size} process(es) on "
                  f"{ctx.device.type}, batch {batch_per_process} per process | run folder {spec.run_dir}")
        if data.resized:
            log.print(f"=> warning: {resized_notice(config.data.data, data.resized)}", to_file=True)
    if model_options.sync_bn and not config.evaluation.evaluate:  # same keys: its checkpoints load into plain models
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(ctx.device, memory_format=speed.memory_format)
    # rank 0 decides (on a CPU, --amp auto may measure): the processes must agree
    amp_dtype = distributed.broadcast_object(amp_dtype_for(speed.amp, ctx.device) if ctx.is_main else None)
    if ctx.is_main and speed.amp == "auto":
        log.print(f"=> {describe_amp(speed.amp, ctx.device)}")
    simam_kernels = networks.get_simam_implementation(model)  # None: no SimAM
    tf32 = "" if ctx.device.type != "cuda" else " (fp32 without TF32)" if speed.no_tf32 else " (TF32 for fp32 math)"
    log.print(f"=> precision {str(amp_dtype).replace('torch.', '') if amp_dtype else 'fp32'}{tf32}, "
              f"{'channels_last' if speed.channels_last else 'contiguous'}, "
              f"{'torch.compile' if speed.compile else 'eager'}, {config.data.input_pipeline} input pipeline"
              + (f", SimAM kernels: {simam_kernels}, {networks.fused_pairs(model)} SimAM + BatchNorm pairs fused"
                 if simam_kernels else ""))
    mixing = config.mixing
    mixer = None
    if mixing.mixup_alpha or mixing.cutmix_alpha:
        mixer = BatchMixer(len(data.classes), mixing.mixup_alpha, mixing.cutmix_alpha, spec.seed)
    options = StepOptions(ctx, nn.CrossEntropyLoss(label_smoothing=loop.label_smoothing), speed.memory_format,
                          amp_dtype, loop.print_freq, loop.log_freq, loop.max_bad_steps, progress=not loop.no_progress,
                          accum_steps=loop.accum_steps, mixer=mixer, tta=config.evaluation.tta == "flip")
    return Run(config, spec, data, model, options, log, cost)


def build_train_state(run: Run, checkpoint: LoadedCheckpoint | None) -> TrainState:
    """Optimizer, schedule, gradient scaler and weight average for the model, restored from the checkpoint when
    there is one."""
    config = run.config
    optimizer = build_optimizer(run.model, **asdict(config.optimizer))
    iterations_per_epoch = len(run.data.train_loader)
    ema = None
    if config.ema.model_ema:
        ema = build_ema(run.model, config.ema.model_ema_decay, config.ema.model_ema_steps, config.loop.batch_size,
                        config.loop.epochs, config.schedule.warmup_epochs)
    scheduler = build_scheduler(optimizer, iterations_per_epoch, **asdict(config.schedule))
    state = TrainState(run.model, optimizer, scheduler,
                       torch.amp.GradScaler(run.options.device.type, enabled=run.options.amp_dtype == torch.float16),
                       iterations_per_epoch, epoch=config.loop.start_epoch, ema=ema)
    if checkpoint is not None and config.evaluation.save_weights and config.evaluation.eval_ema:
        load_model_weights(run, checkpoint, eval_ema=True)
    elif checkpoint is not None:
        state.load_checkpoint(checkpoint, run.spec, len(run.data.classes), run.options.ctx)
        run.log.print(f"=> resumed from {checkpoint.path} at epoch {state.epoch}"
                      + (f", iteration {state.iteration}" if state.iteration else ""), to_file=True)
    return state


def fit(run: Run, state: TrainState, lock: RunLock | None = None) -> dict[str, Any]:
    """Train from ``state`` to ``--epochs``, validating and saving after every epoch; a stop request saves where
    the run is; a run folder another job has taken over (``lock``, rank 0's) stops the job unsaved. Returns the last
    epoch's figures."""
    ctx, spec, log, config = run.options.ctx, run.spec, run.log, run.config
    flatten_buffers(run.model)  # the non-finite guard then saves and restores them in one operation per dtype
    train_model = run.model
    if ctx.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            run.model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    compiled = config.performance.compile
    if compiled:
        train_model = compile_model(train_model)
    eval_model = evaluation_model(run.model, compiled)
    eval_ema = evaluation_model(state.ema.module, compiled) if state.ema is not None else None
    latest = os.path.join(spec.run_dir, LATEST)
    if ctx.is_main:
        remove_partial_saves(spec.run_dir)
        save_config(argparse.Namespace(**config.recipe), os.path.join(spec.run_dir, "config.yaml"))
        log.forget_epochs_from(state.epoch)

    def save(best: bool = False) -> None:
        rng_per_rank = capture_rng_per_process(ctx.device)  # every process takes part
        if ctx.is_main:
            if lock is not None:
                lock.check_held()
            content = state.to_checkpoint(spec, run.data.classes, config.recipe, rng_per_rank)
            if run.data.resized:  # trained on make_shards.py --max-side's images: the results table says so
                content["data_resized"] = run.data.resized
            save_checkpoint(content, spec.run_dir, best=best)

    def save_inside_epoch() -> None:
        started = time.perf_counter()
        save()
        log.print(f"=> saved {latest} at epoch {state.epoch}, iteration {state.iteration} "
                  f"in {time.perf_counter() - started:.2f} s", to_file=True)

    checkpoints = IntervalCheckpoints(save_inside_epoch, config.checkpoints.checkpoint_interval,
                                      config.checkpoints.checkpoint_every_steps)
    result: dict[str, Any] = {}
    with StopRequest() as stop:
        while state.epoch < config.loop.epochs:
            epoch = state.epoch
            crop_size = run.data.crop_size_of(epoch)
            if crop_size is not None:
                log.print(f"=> epoch {epoch}: training crops of {crop_size} px", to_file=True)
            train = train_one_epoch(train_model, run.data, state, run.options, log, stop, checkpoints)
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
