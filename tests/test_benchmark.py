"""scripts/benchmark.py: each suite runs the project's own code and reports what it measured (tiny sizes;
the figures themselves are not asserted, only their consistency)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from scripts import benchmark
from training import presets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
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


def test_alternate_reports_the_median_round_and_alternates_the_order(monkeypatch):
    """Both benchmarks' timing: every round times each candidate in turn (reversed every other round) and each
    figure is the median over the rounds of the seconds per call."""
    from scripts import _timing

    clock, calls = [0.0], []
    monkeypatch.setattr(_timing.time, "perf_counter", lambda: clock[0])
    durations = {"a": iter([1.0, 1.0, 9.0, 9.0, 2.0, 2.0]), "b": iter([4.0, 4.0, 3.0, 3.0, 5.0, 5.0])}

    def candidate(name):
        def call():
            calls.append(name)
            clock[0] += next(durations[name])
        return call

    syncs = []
    seconds = _timing.alternate({"a": candidate("a"), "b": candidate("b")}, rounds=3, per_round=2,
                                synchronize=lambda: syncs.append(1))
    assert calls == ["a", "a", "b", "b", "b", "b", "a", "a", "a", "a", "b", "b"]
    assert seconds == {"a": 2.0, "b": 4.0}
    assert len(syncs) == 2 * 2 * 3  # before and after every timed candidate


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_line(capsys):
    assert benchmark.cli(["--suite", "simam", "--device", "cuda"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: --device cuda but CUDA is not available"]


def test_data_benchmark_reports_both_pipelines(tmp_path):
    from scripts._data_benchmark import run_data_suite

    result = run_data_suite(image_count=2, image_size=(64, 48), crop=32, resize=36, repeats=1, workdir=str(tmp_path))
    for pipeline in presets.PIPELINES:
        assert all(result["images_per_sec"][pipeline][split] > 0 for split in ("train", "eval", "decode"))
    assert set(result["speedup"]) == {"train", "eval", "decode"} and result["settings"]["threads"] == 1
