"""The README's 'Reproduce the table' path on generated data: two short runs (baseline and SimAM), their
evaluation by scripts/eval_checkpoints.sh, then the results table and the training-curves figure."""

import csv
import json
import os
import shutil
import subprocess

import matplotlib.image
import pytest

import main_imagenet
from helpers import TINY, train_argv
from scripts import make_results_table, plot_curves
from scripts.make_sample_data import make_dataset

pytestmark = pytest.mark.slow  # trains two runs, then evaluates them with the shell launcher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Baseline and SimAM ResNet-18, 3 epochs each; their best checkpoints copied into a checkpoints/ folder."""
    tmp = tmp_path_factory.mktemp("reproduce")
    make_dataset(str(tmp / "data"), classes=4, train_per_class=24, val_per_class=5, size=40, seed=3)
    run_dirs = {}
    for attention in ("none", "simam"):
        result = main_imagenet.main(main_imagenet.get_args_parser().parse_args(
            train_argv(tmp / "data", tmp / "ckpts", attention=attention, epochs=3)))
        run_dirs[attention] = result["run_dir"]
        target = tmp / "checkpoints" / os.path.basename(result["run_dir"])
        target.mkdir(parents=True)
        shutil.copy(os.path.join(result["run_dir"], "model_best.pth.tar"), target)
    return tmp, run_dirs


def test_table_carries_the_evaluated_accuracy(runs):
    tmp, _ = runs
    done = subprocess.run(["bash", "scripts/eval_checkpoints.sh", str(tmp / "data"), str(tmp / "checkpoints"),
                           "-j", "0", *TINY], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OUT": str(tmp / "evals")})
    assert done.returncode == 0, done.stderr[-2000:]
    evaluations = {json.loads(p.read_text())["attention_type"]: json.loads(p.read_text())
                   for p in (tmp / "evals").glob("*.json")}
    assert set(evaluations) == {"none", "simam"}

    table = tmp / "imagenet.md"
    make_results_table.main(make_results_table.get_args_parser().parse_args(
        [str(tmp / "evals"), "-o", str(table), "--archs", "resnet18", "--attentions", "none,simam,se"]))
    lines = table.read_text().splitlines()
    simam_row = next(line for line in lines if line.startswith("| ResNet-18 | SimAM"))
    baseline_row = next(line for line in lines if line.startswith("| ResNet-18 | baseline"))
    se_row = next(line for line in lines if line.startswith("| ResNet-18 | SE"))
    assert f"| {evaluations['simam']['top1']:.2f} |" in simam_row and "| 11.69 M | 1.82 G |" in simam_row
    assert f"{evaluations['simam']['top1'] - 71.31:+.2f}" in simam_row  # the paper's SimAM-R18 top-1
    assert f"| {evaluations['none']['top1']:.2f} |" in baseline_row
    assert "not evaluated" in se_row
    with open(tmp / "imagenet.csv") as f:
        rows = {row["attention_type"]: row for row in csv.DictReader(f)}
    assert float(rows["simam"]["top1"]) == pytest.approx(evaluations["simam"]["top1"], abs=1e-6)


def test_curves_figure_from_the_runs(runs):
    tmp, run_dirs = runs
    output = tmp / "figures" / "training_curves.png"
    plot_curves.main(plot_curves.get_args_parser().parse_args(
        [run_dirs["none"], run_dirs["simam"], "--labels", "ResNet-18", "SimAM-R18", "-o", str(output)]))
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(output)
    assert image.shape[1] > image.shape[0] > 100 and image[..., :3].std() > 0.01
