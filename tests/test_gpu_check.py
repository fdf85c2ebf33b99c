"""scripts/gpu_check.py: the CPU dry run of the GPU acceptance checks (every check PASS or SKIP with a reason, the
report written), and its command line: --help, a bad --checks name, a failing check that does not stop the others."""

import json
import os
import subprocess
import sys

import pytest
import torch

from scripts import gpu_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_the_cpu_dry_run_passes_or_skips_every_check(tmp_path):
    command = [sys.executable, "scripts/gpu_check.py", "--device", "cpu", "--output-dir", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads((tmp_path / "gpu-check-cpu.json").read_text())
    assert list(report["checks"]) == list(gpu_check.CHECKS)
    assert report["device"] == "cpu" and report["counts"]["FAIL"] == 0
    for name, result in report["checks"].items():
        assert result["status"] in ("PASS", "SKIP"), (name, result)
        assert result["summary"].strip(), name  # a SKIP says why
    for name in gpu_check.CUDA_ONLY:
        assert report["checks"][name]["status"] == "SKIP"
        assert "only on CUDA" in report["checks"][name]["summary"]
    summary = (tmp_path / "gpu-check-cpu.md").read_text()
    assert all(f"| {name} | {report['checks'][name]['status']} |" in summary for name in gpu_check.CHECKS)
    assert str(tmp_path) not in summary.split("\n", 3)[3]  # the table names no machine paths


def test_help_lists_every_check(capsys):
    with pytest.raises(SystemExit) as exit_:
        gpu_check.cli(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in gpu_check.CHECKS) and "--time-budget" in out


def test_an_unknown_check_is_a_one_line_error(capsys, tmp_path):
    status = gpu_check.cli(["--device", "cpu", "--checks", "fp16_guard,nope", "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2
    assert err.strip().splitlines() == [err.strip()] and "unknown check 'nope'" in err and "fp16_guard" in err
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_cuda_without_a_gpu_is_a_one_line_error(capsys):
    assert gpu_check.cli(["--checks", "fp16_guard"]) == 2
    assert "--device cpu" in capsys.readouterr().err


def test_a_failing_check_is_reported_and_the_others_still_run(monkeypatch, tmp_path, capsys):
    ran = []

    def raises(run):
        ran.append("raises")
        raise RuntimeError("the device said no")

    def passes(run):
        ran.append("passes")
        return gpu_check.verdict(True, "fine", value=1.5)

    def skips(run):
        ran.append("skips")
        return gpu_check.skip("not on this device")

    monkeypatch.setattr(gpu_check, "CHECKS", {"raises": raises, "passes": passes, "skips": skips})
    status = gpu_check.main(["--device", "cpu", "--output-dir", str(tmp_path)])
    assert status == 1 and ran == ["raises", "passes", "skips"]
    report = json.loads((tmp_path / "gpu-check-cpu.json").read_text())
    checks = report["checks"]
    assert checks["raises"]["status"] == "FAIL" and checks["raises"]["error"] == "RuntimeError: the device said no"
    assert "test_gpu_check.py" in checks["raises"]["where"]
    assert checks["passes"] == {"status": "PASS", "summary": "fine", "figures": {"value": 1.5},
                                "seconds": checks["passes"]["seconds"]}
    assert checks["skips"]["status"] == "SKIP" and checks["skips"]["summary"] == "not on this device"
    assert report["counts"] == {"PASS": 1, "FAIL": 1, "SKIP": 1}
    summary = (tmp_path / "gpu-check-cpu.md").read_text()
    assert "| raises | FAIL |" in summary and "| passes | PASS |" in summary and "| skips | SKIP |" in summary
    out = capsys.readouterr().out
    assert "FAIL raises" in out and "PASS passes" in out and "SKIP skips" in out


def test_a_subset_runs_in_the_tables_order(monkeypatch, tmp_path):
    ran = []
    checks = {name: (lambda run, name=name: ran.append(name) or gpu_check.verdict(True, name)) for name in "abc"}
    monkeypatch.setattr(gpu_check, "CHECKS", checks)
    assert gpu_check.main(["--device", "cpu", "--checks", "c, a", "--output-dir", str(tmp_path)]) == 0
    assert ran == ["a", "c"]
