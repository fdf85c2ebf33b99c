"""The README opens with the two commands, and CI runs the second one."""

from pathlib import Path

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
