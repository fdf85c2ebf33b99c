"""scripts/benchmark.py: each suite runs the project's own code and reports what it measured (tiny sizes;
the figures themselves are not asserted, only their consistency)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from scripts import benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_train_suite_prints_one_json_line_with_images_per_sec(tmp_path):
    committed = os.path.join(ROOT, "results", "benchmarks", "train-resnet18-simam-cpu.json")
    before = os.stat(committed).st_mtime_ns if os.path.exists(committed) else None
    argv = [sys.executable, "scripts/benchmark.py", "--suite", "train", "-a", "resnet18", "--attention_type", "simam",
            "--attention_param", "0.1", "-b", "4", "--image-size", "32", "--steps", "2", "--warmup", "1",
            "--rounds", "2", "--no-compile", "--attention-overhead", "--num-classes", "10", "--json"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["suite"] == "train" and result["device"] == "cpu" and result["torch"] == torch.__version__
    assert result["images_per_sec"] > 0 and result["release_images_per_sec"] > 0
    assert result["speedup_vs_release"] == pytest.approx(result["images_per_sec"] / result["release_images_per_sec"])
    assert result["settings"]["channels_last"] and not result["settings"]["compile"]
    assert result["release_settings"] == {"amp": "fp32", "channels_last": False, "compile": False,
                                          "simam_impl": "reference", "input": "float32"}
    assert "attention_overhead_pct" in result
    after = os.stat(committed).st_mtime_ns if os.path.exists(committed) else None
    assert after == before  # --json without --output writes no file


def test_simam_suite_counts_saved_memory_and_checks_accuracy(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmark.networks.attentions.simam_kernels, "compiled_available", lambda device: False)
    output = tmp_path / "simam.json"
    result = benchmark.main(["--suite", "simam", "--shape", "2", "4", "9", "9", "--rounds", "1", "--memory-batch", "1",
                             "--output", str(output)])
    assert json.loads(output.read_text()) == json.loads(json.dumps(result))
    assert set(result["speed"]) == {"reference", "eager"}
    assert result["accuracy"]["eager"]["output_max_abs_diff"] <= 1e-5
    for arch, counts in result["saved_memory"]["archs"].items():
        for kind in ("all", "activations"):
            assert 0 < counts[kind]["fused_overhead_pct"] < counts[kind]["paper_formula_overhead_pct"], (arch, kind)


def test_saved_for_backward_counts_storages_and_tells_weights_apart():
    linear = torch.nn.Linear(4, 4)
    x = torch.randn(3, 4, requires_grad=True)
    # linear(x) saves x and the weight (a transposed view of it), tanh its output
    counts = benchmark.saved_for_backward(torch.nn.Sequential(linear, torch.nn.Tanh()), x)
    assert counts["activations"] == x.nbytes + 3 * 4 * 4
    assert counts["all"] == counts["activations"] + linear.weight.nbytes


def test_eval_suite(tmp_path):
    result = benchmark.main(["--suite", "eval", "-a", "mobilenet_v2", "--attention_type", "simam", "-b", "2",
                             "--image-size", "32", "--steps", "1", "--warmup", "1", "--rounds", "1", "--no-compile",
                             "--num-classes", "10", "--output", str(tmp_path / "eval.json")])
    assert result["images_per_sec"] > 0 and result["release_images_per_sec"] > 0
