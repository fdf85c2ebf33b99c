#!/usr/bin/env python
"""Train or evaluate ImageNet CNNs with SimAM (or SE, CBAM, ECA, SRM) attention.

The paper's commands work as they are:

    python main_imagenet.py DATA --gpu 0,1,2,3 --epochs 100 -j 20 -a resnet18 --attention_type simam \\
        --attention_param 0.1
    python main_imagenet.py DATA --gpu 0,1,2,3 -j 20 -a resnet18 -e --resume PATH.pth
    torchrun --nnodes 2 --nproc_per_node 8 ... main_imagenet.py DATA --config configs/resnet50_simam.yaml

``--gpu 0,1,2,3`` starts one DistributedDataParallel process per GPU; under torchrun each process takes
its place from the environment; without CUDA everything runs on the CPU (gloo when distributed).
The flow reads top to bottom: cli -> get_args_parser (each subsystem's options, from its module under training/)
-> main: resolve the options once (training.run.resolve), launch, and in each process training.run.worker, whose
phases are find_checkpoint, resolve_run, set_up, then evaluate_checkpoint, save_weights or fit.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings
from dataclasses import replace
from typing import Any

import torch
import torch.multiprocessing as mp

from training import checkpoint, data, distributed, ema, engine, evaluation, mixing, optim, performance, run, schedule
from training.config import add_config_option, parse_with_config
from training.errors import TrainingError, UserError, exit_status, one_line
from training.options import HelpFormatter
from training.run import Config, resolve, worker

# With fp16 the gradient scaler skips steps whose gradients overflow; the schedule still advances per iteration.
warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")

# Each subsystem's options, in --help's order: flags, defaults, help and range checks live in its module.
SUBSYSTEMS = (data, run, engine, optim, schedule, mixing, ema, performance, checkpoint, evaluation, distributed)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The command line: the release's flags with their names and meanings, plus the additions."""
    parser = argparse.ArgumentParser(
        description="Train or evaluate ImageNet CNNs with SimAM / SE / CBAM / ECA / SRM attention.",
        formatter_class=HelpFormatter, add_help=add_help)
    add_config_option(parser)
    for subsystem in SUBSYSTEMS:
        subsystem.add_options(parser)
    return parser


def check_args(args: argparse.Namespace) -> Config:
    """Reject bad flag values before any process starts (one line each); returns the options, resolved."""
    return resolve(args)


# ---------------------------------------------------------------------------------------------------------
# Launch: one process here, one per GPU (spawn), or torchrun's.
# ---------------------------------------------------------------------------------------------------------

def main(args: argparse.Namespace) -> dict[str, Any] | None:
    """Train (or with ``-e`` evaluate) as ``args`` say.

    Returns the result (final metrics) when the work ran in this process; ``None`` after spawning.
    Bad input raises ``UserError``.
    """
    config = check_args(args)
    launch = config.launch
    if distributed.launched_by_torchrun():
        return worker(distributed.torchrun_context(launch), config)
    devices = launch.devices()
    if len(devices) == 1 and launch.nodes == 1:
        return worker(distributed.Context(device=devices[0]), config)
    config = replace(config, launch=launch.meeting_point())
    if len(devices) == 1:
        return worker(distributed.spawned_context(0, devices, config.launch), config)
    spawn(devices, config)
    return None


def _spawned_worker(local_rank: int, devices: list[torch.device], config: Config, errors) -> None:
    """One spawned process. Its one-line error goes to the parent (``errors``), which prints the first one: a
    corrupt image in any process's share is named, once."""
    try:
        worker(distributed.spawned_context(local_rank, devices, config.launch), config)
    except (UserError, TrainingError) as error:
        status = 2 if isinstance(error, UserError) else 1
        errors.put((status, f"error: {one_line(error)}"))
        sys.exit(status)
    except KeyboardInterrupt:  # a second Ctrl-C; torch's wrapper would report it as success
        sys.exit(130)


def spawn(devices: list[torch.device], config: Config, dist_url: str | None = None) -> None:
    """One process per device, meeting at ``dist_url`` (default: the options' ``--dist-url``); SIGTERM is passed on
    to them, Ctrl-C reaches them from the terminal."""
    if dist_url is not None:
        config = replace(config, launch=replace(config.launch, dist_url=dist_url))
    errors = mp.get_context("spawn").SimpleQueue()
    context = mp.start_processes(_spawned_worker, args=(devices, config, errors), nprocs=len(devices),
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


def cli(argv: list[str] | None = None) -> int:
    """Command-line entry: bad input is one line on stderr and exit status 2, never a traceback."""
    return exit_status(lambda: main(parse_with_config(get_args_parser(), argv)))


if __name__ == "__main__":
    sys.exit(cli())
