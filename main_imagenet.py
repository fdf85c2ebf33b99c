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
import sys
import warnings
from dataclasses import replace
from typing import Any

import torch

from training import checkpoint, data, distributed, ema, engine, evaluation, mixing, optim, performance, run, schedule
from training.config import add_config_option, parse_with_config
from training.errors import exit_status
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
# Launch: one process here, one per GPU (spawn), or torchrun's (training.distributed.launch)
# ---------------------------------------------------------------------------------------------------------

def main(args: argparse.Namespace) -> dict[str, Any] | None:
    """Train (or with ``-e`` evaluate) as ``args`` say.

    Returns the result (final metrics) when the work ran in this process; ``None`` after spawning.
    Bad input raises ``UserError``.
    """
    return distributed.launch(worker, check_args(args))


def spawn(devices: list[torch.device], config: Config, dist_url: str | None = None) -> None:
    """One process per device (``--gpu 0,1``), meeting at ``dist_url`` (default: the options' ``--dist-url``)."""
    if dist_url is not None:
        config = replace(config, launch=replace(config.launch, dist_url=dist_url))
    distributed.spawn(worker, devices, config)


def cli(argv: list[str] | None = None) -> int:
    """Command-line entry: bad input is one line on stderr and exit status 2, never a traceback."""
    return exit_status(lambda: main(parse_with_config(get_args_parser(), argv)))


if __name__ == "__main__":
    sys.exit(cli())
