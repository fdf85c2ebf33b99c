"""scripts/make_results_table.py: the ImageNet table from real evaluation JSON files (rows restricted for speed)."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import main_imagenet
import networks
from scripts import make_results_table as table
from training.metrics import EVAL_JSON_KEYS

ROOT = Path(__file__).resolve().parents[1]


def make_table(*argv):
    return table.main(table.get_args_parser().parse_args([str(a) for a in argv]))


def markdown_row(text, model, attention):
    """The cells of the markdown row for (model, attention)."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[:2] == [model, attention]:
            return dict(zip(["model", "attention", "params", "flops", "top1", "top5", "paper_top1", "paper_top5",
                             "delta_top1", "delta_top5", "checkpoint"], cells))
    raise AssertionError(f"no row {model} / {attention} in:\n{text}")


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def evaluation(tiny_data, tmp_path_factory):
    """A real `main_imagenet.py -e` run of a SimAM-ResNet-18 checkpoint on 3-class generated data."""
    tmp = tmp_path_factory.mktemp("eval")
    root = tiny_data
    path = tmp / "ckpt.pth.tar"
    torch.manual_seed(0)
    torch.save({"state_dict": networks.create_net("resnet18", "simam", num_classes=3).state_dict(), "epoch": 1,
                "arch": "resnet18"}, path)
    evals = tmp / "evals"
    evals.mkdir()
    main_imagenet.main(main_imagenet.get_args_parser().parse_args([
        str(root), "-j", "0", "-e", "--resume", str(path), "--ckpt", str(tmp), "--eval-json", str(evals / "e.json"),
        "--train-crop-size", "32", "--val-resize-size", "36", "--val-crop-size", "32", "--no-progress"]))
    (evals / "notes.json").write_text(json.dumps({"hello": 1}))  # not an evaluation: skipped in a folder
    return {"dir": evals, "json": evals / "e.json", "result": json.loads((evals / "e.json").read_text()),
            "checkpoint": path}


@pytest.fixture(scope="module")
def made(evaluation, tmp_path_factory):
    out = tmp_path_factory.mktemp("table") / "imagenet.md"
    result = make_table(evaluation["dir"], "-o", out, "--archs", "resnet18", "--attentions", "none,simam")
    return {**result, "text": out.read_text(), "out": out}


def test_the_evaluation_json_is_a_real_simam_run(evaluation):
    result = evaluation["result"]
    assert (result["arch"], result["attention_type"], result["attention_param"]) == ("resnet18", "simam", 0.1)
    assert result["n_images"] == 9 and 0 <= result["top1"] <= 100 and result["top5"] == 100.0  # 3 classes


def test_reads_exactly_what_the_evaluation_writes(evaluation, tmp_path):
    """`main_imagenet.py -e` writes the keys of EVAL_JSON_KEYS and the table reads such a file; without any of
    them (bad_images, tta and weights aside: evaluations written before them lack them) a file is not an
    evaluation."""
    result = evaluation["result"]
    assert set(result) == set(EVAL_JSON_KEYS) and len(result) == len(EVAL_JSON_KEYS)
    read = table.read_evaluation(str(evaluation["json"]))
    assert read == {**result, "json": str(evaluation["json"])}
    for key in EVAL_JSON_KEYS:
        path = tmp_path / f"without_{key}.json"
        path.write_text(json.dumps({k: v for k, v in result.items() if k != key}))
        if key in ("bad_images", "tta", "weights"):
            assert table.read_evaluation(str(path))["top1"] == result["top1"]
        else:
            with pytest.raises(table.NotAnEvaluation, match=f"missing keys {key}$"):
                table.read_evaluation(str(path))


def test_simam_row_carries_the_evaluation_and_its_delta(evaluation, made):
    result = evaluation["result"]
    row = markdown_row(made["text"], "ResNet-18", "SimAM")
    assert row["top1"] == f"{result['top1']:.2f}" and row["top5"] == f"{result['top5']:.2f}"
    assert (row["paper_top1"], row["paper_top5"]) == ("71.31", "89.88")
    assert row["delta_top1"] == f"{result['top1'] - 71.31:+.2f}"
    assert row["delta_top5"] == f"{result['top5'] - 89.88:+.2f}"
    assert row["checkpoint"] == f"`{evaluation['checkpoint']}`"
    # the markdown says how it was made and where the row comes from
    assert made["text"].startswith("# ")
    assert f"`python scripts/make_results_table.py {evaluation['dir']} -o {made['out']}" in made["text"]
    assert f"- SimAM-ResNet-18: `{evaluation['json']}`" in made["text"]
    assert "not comparable" in made["text"]  # 9 images at 32 px is not the ImageNet protocol


def test_csv_has_the_numbers(evaluation, made):
    result = evaluation["result"]
    assert made["csv"] == made["out"].with_suffix(".csv") and made["csv"].exists()
    rows = read_csv(made["csv"])
    assert list(rows[0]) == ["arch", "attention_type", "attention_param", "params_m", "gflops", "top1", "top5",
                             "paper_top1", "paper_top5", "delta_top1", "delta_top5", "checkpoint", "n_images"]
    assert [(r["arch"], r["attention_type"]) for r in rows] == [("resnet18", "none"), ("resnet18", "simam")]
    simam = rows[1]
    assert float(simam["top1"]) == pytest.approx(result["top1"], abs=1e-6)
    assert float(simam["top5"]) == pytest.approx(result["top5"], abs=1e-6)
    assert float(simam["paper_top1"]) == 71.31 and float(simam["paper_top5"]) == 89.88
    assert float(simam["delta_top1"]) == pytest.approx(result["top1"] - 71.31, abs=1e-6)
    assert float(simam["attention_param"]) == 0.1 and int(simam["n_images"]) == 9
    assert simam["checkpoint"] == str(evaluation["checkpoint"])
    assert float(simam["params_m"]) == pytest.approx(11.689512, abs=1e-6)
    baseline = rows[0]
    assert baseline["attention_param"] == "" and baseline["top1"] == "" and baseline["paper_top1"] == ""
    assert baseline["delta_top1"] == "" and baseline["checkpoint"] == "" and baseline["n_images"] == ""


def test_rows_without_evaluation_say_not_evaluated(made):
    row = markdown_row(made["text"], "ResNet-18", "baseline")
    assert row["top1"] == "not evaluated"
    assert row["top5"] == row["paper_top1"] == row["delta_top1"] == row["checkpoint"] == "–"
    assert "Table 3 of the paper" in made["text"]


def test_params_and_flops_are_the_papers_not_the_jsons(evaluation, made):
    row = markdown_row(made["text"], "ResNet-18", "SimAM")
    assert (row["params"], row["flops"]) == ("11.69 M", "1.82 G")
    assert round(evaluation["result"]["params_m"], 2) != 11.69  # the evaluated net has 3 classes


def test_several_evaluations_keep_the_best(evaluation, tmp_path):
    worse = dict(evaluation["result"], top1=evaluation["result"]["top1"] - 10.0, checkpoint="other.pth.tar")
    better = dict(evaluation["result"], top1=evaluation["result"]["top1"] + 5.0, checkpoint="best.pth.tar")
    for name, data in (("worse.json", worse), ("better.json", better)):
        (tmp_path / name).write_text(json.dumps(data))
    result = make_table(tmp_path / "worse.json", tmp_path / "better.json", evaluation["json"], "-o",
                        tmp_path / "t.md", "--archs", "resnet18", "--attentions", "simam")
    text = (tmp_path / "t.md").read_text()
    row = markdown_row(text, "ResNet-18", "SimAM")
    assert row["top1"] == f"{better['top1']:.2f}" and row["checkpoint"] == "`best.pth.tar`"
    assert any("3 evaluations; kept the one with the highest top-1" in n for n in result["notes"])
    assert "kept the one with the highest top-1" in text


def test_an_evaluated_reduction_ratio_is_used_for_the_complexity(evaluation, tmp_path):
    se8 = dict(evaluation["result"], attention_type="se", attention_param=8.0)
    (tmp_path / "se8.json").write_text(json.dumps(se8))
    make_table(tmp_path / "se8.json", "-o", tmp_path / "t.md", "--archs", "resnet18", "--attentions", "se")
    row = markdown_row((tmp_path / "t.md").read_text(), "ResNet-18", "SE (r=8)")
    expected = networks.complexity("resnet18", "se", 8, image_size=224, num_classes=1000)
    assert row["params"] == f"{expected.params_m:.2f} M" == "11.86 M"  # r=16 (the default) gives 11.78 M
    assert float(read_csv(tmp_path / "t.csv")[0]["attention_param"]) == 8.0


def test_bad_input_is_one_line(evaluation, tmp_path, capsys):
    assert table.cli([str(tmp_path / "missing.json"), "-o", str(tmp_path / "t.md")]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: ") and "missing.json" in message and "\n" not in message
    notes = evaluation["dir"] / "notes.json"
    assert table.cli([str(notes), "-o", str(tmp_path / "t.md")]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: ") and "not an evaluation result" in message and "\n" not in message
    assert not (tmp_path / "t.md").exists()


@pytest.mark.slow
def test_command_line_bad_input_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_results_table.py"), str(tmp_path / "nope"),
                           "-o", str(tmp_path / "t.md")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: no such file or folder: {tmp_path / 'nope'}"]


def test_a_flip_tta_evaluation_is_marked_not_comparable(evaluation, tmp_path):
    flipped = dict(evaluation["result"], tta="flip")
    (tmp_path / "flip.json").write_text(json.dumps(flipped))
    result = make_table(tmp_path / "flip.json", "-o", tmp_path / "t.md", "--archs", "resnet18", "--attentions",
                        "simam")
    row = markdown_row((tmp_path / "t.md").read_text(), "ResNet-18", "SimAM")
    assert row["top1"] == f"{flipped['top1']:.2f} (flip TTA)" and row["delta_top1"] == row["delta_top5"] == "–"
    assert any("not the paper's single-crop protocol" in note for note in result["notes"])


def test_an_evaluation_written_before_tta_and_weights_still_reads(evaluation, tmp_path):
    older = {key: value for key, value in evaluation["result"].items() if key not in ("tta", "weights")}
    (tmp_path / "old.json").write_text(json.dumps(older))
    make_table(tmp_path / "old.json", "-o", tmp_path / "t.md", "--archs", "resnet18", "--attentions", "simam")
    row = markdown_row((tmp_path / "t.md").read_text(), "ResNet-18", "SimAM")
    assert row["top1"] == f"{older['top1']:.2f}" and row["delta_top1"] != "–"
