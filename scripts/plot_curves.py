#!/usr/bin/env python
"""Training curves of one or more runs, as in the SimAM paper's figure: top-1 and top-5 accuracy (%) per epoch,
training dashed, validation solid, one colour per run.

Each RUN_DIR is a run folder of main_imagenet.py; its metrics.jsonl is read, or, when there is none, its
TensorBoard event files (scalars train/top1, train/top5, val/top1, val/top5).

Examples:
    python scripts/plot_curves.py ckpts/imagenet-resnet50 ckpts/imagenet-resnet50-simam-param0.1
    python scripts/plot_curves.py RUN_A RUN_B --labels ResNet-50 SimAM-R50 --title "ResNet-50 on ImageNet" -o curves.pdf
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from scripts._cli import make_cli  # noqa: E402
from training.errors import UserError  # noqa: E402
from training.metrics import TENSORBOARD_TAGS  # noqa: E402

# the accuracy series drawn: metrics.jsonl key -> TensorBoard tag
SERIES = {key: TENSORBOARD_TAGS[key] for key in ("train_top1", "train_top5", "val_top1", "val_top5")}
PANELS = (("top1", "Top-1 accuracy (%)"), ("top5", "Top-5 accuracy (%)"))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="run folders holding metrics.jsonl or TensorBoard events")
    parser.add_argument("-o", "--output", default=os.path.join("results", "training_curves.png"),
                        help="image to write; the format follows the extension (default: results/training_curves.png)")
    parser.add_argument("--labels", nargs="+", default=None, metavar="LABEL",
                        help="one legend label per run (default: the folder name without 'imagenet-')")
    parser.add_argument("--title", default=None, help="figure title (default: none)")
    return parser


def default_label(run_dir: str) -> str:
    """The run folder's name without the leading 'imagenet-'."""
    name = os.path.basename(os.path.normpath(os.path.abspath(run_dir)))
    return name[len("imagenet-"):] if name.startswith("imagenet-") and len(name) > len("imagenet-") else name


def read_metrics_jsonl(path: str) -> dict[str, list[tuple[int, float]]]:
    """Series {key: [(epoch, value), ...]} from metrics.jsonl; a repeated epoch keeps its last line."""
    by_epoch: dict[int, dict] = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{path}:{number}: not a JSON line ({error.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
                raise UserError(f"{path}:{number}: expected a JSON object with an integer 'epoch'")
            by_epoch[record["epoch"]] = record
    series = {}
    for key in SERIES:
        points = [(epoch, float(r[key])) for epoch, r in sorted(by_epoch.items())
                  if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
        if points:
            series[key] = points
    return series


def read_tensorboard(run_dir: str, tags: Mapping[str, str] = SERIES) -> dict[str, list[tuple[int, float]]]:
    """Series {key: [(epoch, value), ...]} of ``tags`` (key -> tag) from the folder's TensorBoard events
    (step = epoch; last value per step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    try:
        accumulator = EventAccumulator(run_dir, size_guidance={"scalars": 0})
        accumulator.Reload()
        written = set(accumulator.Tags().get("scalars", []))
        series = {}
        for key, tag in tags.items():
            if tag in written:
                last = {event.step: float(event.value) for event in accumulator.Scalars(tag)}
                series[key] = sorted(last.items())
    except Exception as error:  # corrupt or unreadable event files
        raise UserError(f"cannot read the TensorBoard events in {run_dir}: {error}") from None
    return series


def load_run(run_dir: str) -> dict[str, list[tuple[int, float]]]:
    """A run's accuracy series, from metrics.jsonl or else its TensorBoard event files."""
    if not os.path.isdir(run_dir):
        raise UserError(f"{run_dir} is not a folder")
    metrics = os.path.join(run_dir, "metrics.jsonl")
    if os.path.isfile(metrics):
        series, source = read_metrics_jsonl(metrics), metrics
    elif glob.glob(os.path.join(run_dir, "events.out.tfevents.*")):
        series, source = read_tensorboard(run_dir), f"the TensorBoard events in {run_dir}"
    else:
        raise UserError(f"{run_dir} has neither metrics.jsonl nor TensorBoard event files")
    if not series:
        raise UserError(f"no accuracy values ({', '.join(SERIES)}) in {source}")
    return series


def plot_curves(runs: list[tuple[str, dict[str, list[tuple[int, float]]]]], title: str | None = None) -> plt.Figure:
    """The figure: top-1 and top-5 panels, x = epoch (1-based), train dashed and val solid, a colour per run."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (metric, ylabel) in zip(axes, PANELS):
        for index, (label, series) in enumerate(runs):
            colour = colours[index % len(colours)]
            for split, style in (("train", "--"), ("val", "-")):
                points = series.get(f"{split}_{metric}")
                if not points:
                    continue
                ax.plot([epoch + 1 for epoch, _ in points], [value for _, value in points], linestyle=style,
                        color=colour, linewidth=1.5, marker="o" if len(points) == 1 else None,
                        label=f"{label} {split}")
        ax.set_xlabel("Epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(ylabel.replace(" (%)", ""))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def main(args: argparse.Namespace) -> str:
    """Read the runs, draw the figure, save it (dpi 150) and print its path; bad input raises ``UserError``."""
    if args.labels is not None and len(args.labels) != len(args.runs):
        raise UserError(f"{len(args.labels)} labels given for {len(args.runs)} run folders")
    labels = args.labels or [default_label(run) for run in args.runs]
    runs = [(label, load_run(run)) for label, run in zip(labels, args.runs)]
    extension = os.path.splitext(args.output)[1].lstrip(".").lower()
    fig = plot_curves(runs, args.title)
    try:
        supported = fig.canvas.get_supported_filetypes()
        if extension not in supported:
            raise UserError(f"cannot write '{args.output}': use one of the extensions {', '.join(sorted(supported))}")
        folder = os.path.dirname(args.output)
        if folder:
            os.makedirs(folder, exist_ok=True)
        fig.savefig(args.output, dpi=150)
    except OSError as error:
        raise UserError(f"cannot write {args.output}: {error.strerror or error}") from None
    finally:
        plt.close(fig)
    print(args.output)
    return args.output


cli = make_cli(main, get_args_parser)  # bad input: one line `error: ...`, exit status 2


if __name__ == "__main__":
    sys.exit(cli())
