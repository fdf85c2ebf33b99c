"""The loops: one training step, one training epoch, one evaluation.

They read a ``TrainState`` (what a checkpoint saves) and ``StepOptions`` (how steps run and report); nothing here
knows the command line. Nothing is read back to the host inside a step: the processes synchronise once per print
interval (``synchronize``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn
from tqdm import tqdm

from . import distributed
from .data import InputPipeline, skipped_images
from .errors import TrainingError, UserError
from .metrics import RunLog, RunningSums, averages_of, progress_line, show_progress
from .mixing import dominant_label
from .optim import NonFiniteGuard, skipped_flag, take_found_inf
from .options import Options
from .performance import to_device
from .signals import StopRequest
from .state import TrainState


@dataclass(frozen=True)
class LoopOptions(Options):
    """The training loop's options: its length, batches and reporting."""

    epochs: int = 90
    start_epoch: int = 0
    batch_size: int = 256  # over all processes
    accum_steps: int = 1
    label_smoothing: float = 0.0
    print_freq: int = 10
    log_freq: int = 500
    max_bad_steps: int = 0
    no_progress: bool = False

    def check(self) -> None:
        self.at_least_one("epochs", "batch_size", "print_freq", "log_freq", "accum_steps")
        self.not_negative("start_epoch", "max_bad_steps")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UserError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.batch_size % self.accum_steps:
            raise UserError(f"--accum-steps {self.accum_steps} does not divide -b {self.batch_size}: each optimizer "
                            "step adds up equal micro-batches")


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training loop")
    arg = group.add_argument
    arg("--epochs", default=LoopOptions.epochs, type=int, metavar="N", help="number of total epochs to run")
    arg("--start-epoch", default=LoopOptions.start_epoch, type=int, metavar="N",
        help="manual epoch number (useful on restarts; --resume sets it from the checkpoint)")
    arg("-b", "--batch-size", default=LoopOptions.batch_size, type=int, metavar="N",
        help="total mini-batch size over all processes (split evenly among them)")
    arg("--accum-steps", default=LoopOptions.accum_steps, type=int, metavar="K",
        help="gradient accumulation: each optimizer step adds up K micro-batches of -b / (K x processes) images "
             "(-b stays the batch of a step; BatchNorm normalises each micro-batch on its own)")
    arg("--label-smoothing", default=LoopOptions.label_smoothing, type=float,
        help="label smoothing of the training loss")
    arg("-p", "--print-freq", default=LoopOptions.print_freq, type=int, metavar="N",
        help="print (and sync metrics) every N iterations")
    arg("--log_freq", type=int, default=LoopOptions.log_freq,
        help="write a training line to log.txt every N iterations")
    arg("--max-bad-steps", default=LoopOptions.max_bad_steps, type=int, metavar="N",
        help="training steps per epoch whose loss may be NaN/inf (their updates are skipped) before the run stops")
    arg("--no-progress", action="store_true", help="no tqdm progress bars (they are also off when not on a terminal)")


@dataclass(frozen=True)
class StepOptions:
    """How the steps of a run are computed and reported."""

    ctx: distributed.Context
    criterion: nn.Module = field(default_factory=nn.CrossEntropyLoss)
    memory_format: torch.memory_format = torch.contiguous_format
    amp_dtype: torch.dtype | None = None  # autocast dtype; None: fp32
    print_freq: int = 10  # print, and synchronise the processes, every N iterations
    log_freq: int = 500  # a line in log.txt every N iterations
    max_bad_steps: int = 0  # steps per epoch with a NaN/inf loss before the run stops
    progress: bool = True  # tqdm bars (rank 0, on a terminal)
    accum_steps: int = 1  # micro-batches per optimizer step (gradient accumulation)
    mixer: Callable | None = None  # batch mixing (training.mixing.BatchMixer): soft targets
    tta: bool = False  # evaluation: average the logits of each image and its mirror image

    @property
    def device(self) -> torch.device:
        return self.ctx.device


@dataclass
class IntervalCheckpoints:
    """When training writes a resumable checkpoint inside an epoch: every ``minutes`` of training (the processes
    agree at print intervals, on whether any of them is due) and every ``every_steps`` optimizer steps of the run
    (a count every process knows); 0 turns either off. ``save`` writes the checkpoint (a collective)."""

    save: Callable[[], None]
    minutes: float = 0.0
    every_steps: int = 0
    last: float = field(default_factory=time.monotonic)

    def time_due(self) -> bool:
        return self.minutes > 0 and time.monotonic() - self.last >= 60.0 * self.minutes

    def step_due(self, step: int) -> bool:
        """``step``: steps of the run done so far."""
        return self.every_steps > 0 and step % self.every_steps == 0

    def write(self) -> None:
        self.save()
        self.last = time.monotonic()


def train_step(model: nn.Module, images: Tensor, target: Tensor, state: TrainState, options: StepOptions,
               guard: NonFiniteGuard | None = None, step: int = 0) -> tuple[Tensor, Tensor]:
    """One optimisation step of ``model`` (``state.model``, or its DDP / compiled wrapper) with ``state``'s
    optimizer and gradient scaler; returns (output, loss) without reading anything back to the host. With a
    ``guard``, a loss that is not finite is marked as step ``step``, and a loss or gradients that are not finite
    make no update and leave the buffers as they were (see ``training.optim``).

    With ``options.accum_steps`` K > 1 the batch is cut into K micro-batches whose gradients add up (each loss
    weighted by its share of the batch; under DDP the gradients are synchronised on the last one only), so the step
    is the one the whole batch would give, except that BatchNorm normalises each micro-batch with its own
    statistics. Training loaders give only whole batches then (``training.data.build_data``), so the micro-batches
    are equal and every step has one graph under ``torch.compile``.
    """
    if guard is not None:
        guard.save_buffers()
    state.optimizer.zero_grad(set_to_none=True)
    if options.accum_steps == 1:
        output, loss = _forward_backward(model, images, target, state, options)
    else:
        outputs, weighted_losses = [], []
        micro_batches = list(zip(images.chunk(options.accum_steps), target.chunk(options.accum_steps)))
        for index, (part, part_target) in enumerate(micro_batches):
            last = index == len(micro_batches) - 1
            no_sync = getattr(model, "no_sync", None)  # DDP (also through torch.compile's wrapper)
            share = len(part) / len(images)  # 1/K for equal micro-batches
            with no_sync() if no_sync is not None and not last else contextlib.nullcontext():
                part_output, part_loss = _forward_backward(model, part, part_target, state, options, scale=share)
            outputs.append(part_output.detach())
            weighted_losses.append(part_loss.detach() * share)
        output, loss = torch.cat(outputs), torch.stack(weighted_losses).sum()
    if guard is not None:
        guard.mark(loss, step)
        if not state.scaler.is_enabled():
            guard.flag_nonfinite_gradients(model, state.optimizer)
    state.scaler.step(state.optimizer)
    if guard is not None:
        guard.restore_buffers_if_skipped(skipped_flag(state.optimizer, state.scaler))  # before update() forgets it
    state.scaler.update()
    take_found_inf(state.optimizer)
    return output, loss


def count_step(sums: RunningSums, loss: Tensor, output: Tensor, target: Tensor) -> None:
    """Add a training step's loss (0 for a NaN/inf one: the step was skipped) and top-1/top-5 hits to ``sums``."""
    sums.update(torch.nan_to_num(loss.detach(), nan=0.0, posinf=0.0, neginf=0.0) * target.size(0), output, target)


def _forward_backward(model: nn.Module, images: Tensor, target: Tensor, state: TrainState, options: StepOptions,
                      scale: float = 1.0) -> tuple[Tensor, Tensor]:
    with torch.autocast(images.device.type, dtype=options.amp_dtype, enabled=options.amp_dtype is not None):
        output = model(images)
        loss = options.criterion(output, target)
    state.scaler.scale(loss * scale if scale != 1.0 else loss).backward()
    return output, loss


def train_one_epoch(model: nn.Module, pipeline: InputPipeline, state: TrainState, options: StepOptions, log: RunLog,
                    stop: StopRequest, checkpoints: IntervalCheckpoints | None = None) -> dict[str, Any]:
    """Train epoch ``state.epoch`` from iteration ``state.iteration`` on ``pipeline``'s training batches, advancing
    ``state.iteration``; returns the epoch's figures, or ``stopped`` when a stop was requested (``state.sums`` then
    holds the running sums). ``checkpoints`` saves where the epoch is at its intervals."""
    model.train()
    epoch, start = state.epoch, state.iteration
    loader = pipeline.train_epoch(epoch, skip_batches=start)
    total = start + len(loader)
    # A checkpoint holds the sums over all processes: rank 0 carries them on, the others start from zero.
    sums = RunningSums(options.device, state.sums if start and options.ctx.is_main else None)
    lr = state.optimizer.param_groups[0]["lr"]
    bar = tqdm(total=total, initial=start, desc=f"Epoch {epoch}", dynamic_ncols=True,
               disable=not show_progress(options.ctx.is_main, not options.progress))
    guard, bad_images, synced = NonFiniteGuard(options.device, total, state.model), 0, None
    images_seen, started = 0, time.perf_counter()
    for iteration, batch in enumerate(loader, start=start):
        bad_images += report_skipped(skipped_images(batch), log)
        images, target = pipeline.to_device(batch[0], batch[1], options.device, options.memory_format)
        step_lr = state.optimizer.param_groups[0]["lr"]
        if options.mixer is not None:  # the loss takes the mixed labels, top-1/top-5 the dominant one
            images, mixed = options.mixer(images, target, epoch, iteration, options.ctx.rank)
            output, loss = train_step(model, images, mixed, state, options, guard, iteration)
            target = dominant_label(mixed)
        else:
            output, loss = train_step(model, images, target, state, options, guard, iteration)
        if state.ema is not None:
            state.ema.maybe_update(state.model, iteration, epoch)
        state.scheduler.step()
        state.iteration = iteration + 1
        count_step(sums, loss, output, target)
        images_seen += target.size(0)
        bar.update(1)

        at_print = iteration % options.print_freq == 0 or iteration == total - 1
        if at_print:
            synced = synchronize(sums, guard, iteration, stop.requested, bad_images, options.device,
                                 checkpoints is not None and checkpoints.time_due())
            check_nonfinite(synced["nonfinite_steps"], epoch, options.max_bad_steps, log.run_dir)
        if at_print or iteration % options.log_freq == 0:
            averages = synced["averages"] if at_print else sums.averages()
            line = progress_line(f"Epoch: [{epoch}]", iteration, total, averages, f"Lr {step_lr:.4f}")
            if at_print:
                bar.set_postfix_str(line.split("\t", 1)[1].replace("\t", " "), refresh=False)
                if bar.disable:
                    log.print(line)
            if iteration % options.log_freq == 0:
                log.write(line)
        # One process checks its own flag every step; several agree at print intervals (no per-step sync).
        if stop.requested if not options.ctx.distributed else at_print and synced["stop"]:
            bar.close()
            state.sums = synced["sums"] if at_print else sums_over_processes(sums)
            return {"stopped": True}
        if checkpoints is not None and state.iteration < total and (
                checkpoints.step_due(epoch * state.iterations_per_epoch + state.iteration)
                or (at_print and synced["checkpoint"])):  # the epoch's last step: its own checkpoint follows
            state.sums = synced["sums"] if at_print else sums_over_processes(sums)
            checkpoints.write()
    bar.close()
    elapsed = time.perf_counter() - started
    if synced is None:  # resumed after the epoch's last step
        synced = synchronize(sums, guard, total - 1, False, bad_images, options.device)
    stats = synced["averages"]  # the last iteration is a print interval
    images_per_s = images_seen * options.ctx.world_size / elapsed if elapsed > 0 else 0.0
    return {"stopped": False, "lr": lr, "loss": stats["loss"], "top1": stats["top1"], "top5": stats["top5"],
            "time_s": elapsed, "images_per_s": images_per_s, "nonfinite_steps": synced["nonfinite_steps"],
            "bad_images": synced["bad_images"]}


def synchronize(sums: RunningSums, guard: NonFiniteGuard, step: int, stop_requested: bool, bad_images: int,
                device: torch.device, checkpoint_due: bool = False) -> dict[str, Any]:
    """What the processes agree on at a print interval, in one collective and one host read: the running
    sums and averages over all processes, the epoch's non-finite steps so far (a step counts once however many processes
    saw it), whether any process was asked to stop, the images skipped so far, and whether any process is due
    to checkpoint."""
    flags = sums.sums.new_tensor([float(stop_requested), float(bad_images), float(checkpoint_due)])
    values = distributed.all_reduce_sum(torch.cat([sums.packed(), flags, guard.pending(step)])).tolist()
    return {"averages": averages_of(values[:4]), "sums": values[:4], "stop": values[4] > 0,
            "bad_images": int(values[5]), "checkpoint": values[6] > 0,
            "nonfinite_steps": guard.add_counted(step, values[7:])}


def sums_over_processes(sums: RunningSums) -> list[float]:
    """The running sums added over all processes, as a checkpoint saves them (a collective)."""
    return distributed.all_reduce_sum(sums.packed()).tolist()


def check_nonfinite(bad_steps: int, epoch: int, max_bad_steps: int, run_dir: str) -> None:
    """More than ``max_bad_steps`` steps of this epoch with a NaN/inf loss stop the run before anything is saved."""
    if bad_steps > max_bad_steps:
        raise TrainingError(
            f"the training loss was NaN/inf in {bad_steps} step(s) of epoch {epoch} (--max-bad-steps {max_bad_steps}); "
            f"stopped without saving, so the checkpoints in {run_dir} are the last good ones. Lower --lr, "
            "add --warmup-epochs or check the data; --max-bad-steps N skips up to N such steps per epoch")


def report_skipped(messages: list[str], log: RunLog) -> int:
    """Log the images ``--skip-bad-images`` passed over (every process warns on stderr); returns how many."""
    for message in messages:
        print(f"warning: skipped {message}", file=sys.stderr, flush=True)
        log.write(f"skipped {message}")
    return len(messages)


@torch.inference_mode()
def evaluate(model: nn.Module, loader, options: StepOptions, log: RunLog) -> dict[str, float]:
    """Loss and top-1/top-5 over the whole validation set; each process evaluates its own share of the
    images and the sums are added, so every image counts exactly once whatever the number of processes."""
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    sums, bad_images = RunningSums(options.device), 0
    for batch in tqdm(loader, desc="Val", dynamic_ncols=True, leave=False,
                      disable=not show_progress(options.ctx.is_main, not options.progress)):
        bad_images += report_skipped(skipped_images(batch), log)
        if len(batch[1]) == 0:  # every image of the batch was unreadable
            continue
        images, target = to_device(batch[0], batch[1], options.device, options.memory_format)
        with torch.autocast(options.device.type, dtype=options.amp_dtype, enabled=options.amp_dtype is not None):
            output = model(images)
            if options.tta:  # flip test-time augmentation: the mean of the two logits
                output = (output.float() + model(images.flip(-1)).float()) / 2
        output = output.float()
        sums.update(criterion(output, target), output, target)
    packed = distributed.all_reduce_sum(torch.cat([sums.packed(), sums.sums.new_tensor([bad_images])])).tolist()
    return {**averages_of(packed[:4]), "bad_images": int(packed[4])}
