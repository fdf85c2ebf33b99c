"""The README opens with the two commands, and CI runs the second one."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    text = (ROOT / "README.md").read_text()
    first_block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    before = text.split("```bash\n", 1)[0]
    assert before.strip().startswith("#") and before.strip().count("\n") == 0, "README must open with the commands"
    return [line for line in first_block.splitlines() if line.strip()]


def test_readme_opens_with_exactly_two_commands():
    setup_and_run, tests = readme_commands()
    assert "pip install -r requirements.txt" in setup_and_run and "pip install -r requirements.txt" in tests
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert readme_commands()[1] in ci_lines


@pytest.mark.slow
def test_quick_start_runs_and_learns(tmp_path):
    """The first command, minus its pip install, run in a fresh folder: trains, evaluates, lists the run."""
    import re
    import subprocess
    import sys

    for name in ("main_imagenet.py", "networks", "training", "scripts", "configs"):
        (tmp_path / name).symlink_to(ROOT / name)
    steps = readme_commands()[0].split(" && ")
    assert "pip install" in steps[0] and "make_sample_data.py" in steps[1]
    assert "main_imagenet.py" in steps[2] and "-e --resume" in steps[3]
    output = ""
    for step in steps[1:]:
        step = re.sub(r"^python ", f"{sys.executable} ", step)
        done = subprocess.run(step, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        output = done.stdout
        if "-e --resume" in step:
            top1 = float(re.findall(r"----------- Acc@1 ([\d.]+) Acc@5", done.stdout)[-1])
            assert top1 >= 50.0  # 10 classes: chance is 10%
    assert {"log.txt", "metrics.jsonl", "model_best.pth.tar", "eval_model_best.json"} <= set(output.split())
