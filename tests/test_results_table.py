"""scripts/make_results_table.py: the ImageNet table from real evaluation JSON files (rows restricted for speed)."""

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import main_imagenet
import networks
from scripts import make_results_table as table
from training.metrics import EVAL_JSON_KEYS, OPTIONAL_EVAL_JSON_KEYS

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
        if key in OPTIONAL_EVAL_JSON_KEYS:
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
    assert baseline["attention_param"] == "" and baseline["top1"] == ""
    assert (baseline["paper_top1"], baseline["paper_top5"]) == ("70.33", "89.58")  # every row of Table 3
    assert baseline["delta_top1"] == "" and baseline["checkpoint"] == "" and baseline["n_images"] == ""


def test_rows_without_evaluation_say_not_evaluated(made):
    row = markdown_row(made["text"], "ResNet-18", "baseline")
    assert row["top1"] == "not evaluated"
    assert row["top5"] == row["delta_top1"] == row["checkpoint"] == "–"
    assert (row["paper_top1"], row["paper_top5"]) == ("70.33", "89.58")
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


def test_an_evaluation_on_resized_shards_is_marked_not_comparable(evaluation, tmp_path):
    for key in ("data_resized", "trained_on_resized"):
        resized = dict(evaluation["result"], **{key: {"max_side": 256, "jpeg_quality": 90}})
        (tmp_path / "r.json").write_text(json.dumps(resized))
        result = make_table(tmp_path / "r.json", "-o", tmp_path / "t.md", "--archs", "resnet18", "--attentions",
                            "simam")
        row = markdown_row((tmp_path / "t.md").read_text(), "ResNet-18", "SimAM")
        assert row["top1"] == f"{resized['top1']:.2f}" and row["delta_top1"] == row["delta_top5"] == "–", key
        assert any("at most 256 px (scripts/make_shards.py --max-side)" in note for note in result["notes"]), key


def test_an_evaluation_written_before_tta_and_weights_still_reads(evaluation, tmp_path):
    older = {key: value for key, value in evaluation["result"].items() if key not in ("tta", "weights")}
    (tmp_path / "old.json").write_text(json.dumps(older))
    make_table(tmp_path / "old.json", "-o", tmp_path / "t.md", "--archs", "resnet18", "--attentions", "simam")
    row = markdown_row((tmp_path / "t.md").read_text(), "ResNet-18", "SimAM")
    assert row["top1"] == f"{older['top1']:.2f}" and row["delta_top1"] != "–"


# The paper's Table 3, every row, typed from the camera-ready PDF (SimAM-R34: 74.46, not the release README's 74.49)
TABLE_3 = """
resnet18 none 70.33 89.58 | resnet18 se 71.19 90.21 | resnet18 cbam 71.24 90.04 | resnet18 eca 70.71 89.85
resnet18 srm 71.09 89.98 | resnet18 simam 71.31 89.88 | resnet34 none 73.75 91.60 | resnet34 se 74.32 91.99
resnet34 cbam 74.41 91.85 | resnet34 eca 74.03 91.73 | resnet34 srm 74.49 92.01 | resnet34 simam 74.46 92.02
resnet50 none 76.34 93.12 | resnet50 se 77.51 93.74 | resnet50 cbam 77.63 93.88 | resnet50 eca 77.17 93.52
resnet50 srm 77.51 93.06 | resnet50 simam 77.45 93.66 | resnet101 none 77.82 93.85 | resnet101 se 78.39 94.13
resnet101 cbam 78.57 94.18 | resnet101 eca 78.46 94.12 | resnet101 srm 78.58 94.15 | resnet101 simam 78.65 94.11
resnext50_32x4d none 77.47 93.52 | resnext50_32x4d se 77.96 93.93 | resnext50_32x4d cbam 78.06 94.07
resnext50_32x4d eca 77.74 93.87 | resnext50_32x4d srm 78.04 93.91 | resnext50_32x4d simam 78.00 93.93
mobilenet_v2 none 71.90 90.51 | mobilenet_v2 se 72.46 90.85 | mobilenet_v2 cbam 72.49 90.78
mobilenet_v2 eca 72.01 90.46 | mobilenet_v2 srm 72.32 90.70 | mobilenet_v2 simam 72.36 90.74
"""


def test_paper_numbers_are_every_row_of_table_3():
    expected = {}
    for cell in TABLE_3.replace("\n", " | ").split("|"):
        if cell.strip():
            arch, attention, top1, top5 = cell.split()
            expected[arch, attention] = (float(top1), float(top5))
    assert len(expected) == 36 and table.PAPER == expected
    assert table.PAPER["resnet34", "simam"] == (74.46, 92.02)


def table_rows(text):
    """The markdown table's rows as dicts keyed by its header."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip().strip("|").split("|")]
    return [dict(zip(header, [c.strip() for c in line.strip().strip("|").split("|")])) for line in lines[2:]]


def spread(values):
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"


@pytest.fixture(scope="module")
def seeds(evaluation, tmp_path_factory):
    """Three SimAM-R18 seeds (best and final checkpoints), three baseline seeds of which two are SimAM's, and
    eval_variants.py results for two SimAM seeds."""
    tmp = tmp_path_factory.mktemp("seeds")
    base = dict(evaluation["result"], n_images=50000, val_resize_size=256, val_crop_size=224)
    simam = {0: (71.0, 90.0), 1: (71.4, 90.2), 2: (71.9, 90.7)}
    final = {0: 70.8, 1: 71.2, 2: 71.5}
    baseline = {0: (70.1, 89.5), 1: (70.3, 89.6), 5: (69.0, 89.0)}
    files = []

    def write(name, data):
        (tmp / name).write_text(json.dumps(data))
        files.append(tmp / name)

    for s, (top1, top5) in simam.items():
        folder = f"ckpts/imagenet-resnet18-simam-param0.1-seed{s}"
        write(f"simam{s}.json", dict(base, checkpoint=f"{folder}/model_best.pth.tar", top1=top1, top5=top5))
        write(f"simam{s}_final.json", dict(base, checkpoint=f"{folder}/checkpoint.pth.tar", top1=final[s], top5=89.0))
    for s, (top1, top5) in baseline.items():
        write(f"none{s}.json", dict(base, attention_type="none", attention_param=None, top1=top1, top5=top5,
                                    checkpoint=f"ckpts/imagenet-resnet18-seed{s}/model_best.pth.tar"))
    variants = {0: {"v2": 59.0, "real": 78.0, "sketch": 20.0, "a": 2.0, "r": 33.0, "mce": 80.0},
                1: {"v2": 60.0, "real": 78.6, "sketch": 21.0, "a": 2.5, "r": 34.0, "mce": 78.0}}
    for s, v in variants.items():
        write(f"variants{s}.json", {
            "arch": "resnet18", "attention_type": "simam", "attention_param": 0.1, "epoch": 99, "seed": s,
            "checkpoint": f"ckpts/imagenet-resnet18-simam-param0.1-seed{s}/model_best.pth.tar",
            "val_resize_size": 256, "val_crop_size": 224, "sets": {"val": "v", "v2": "v2"},
            "val": {"top1": 10.0, "top5": 20.0, "n_images": 50000},  # the -e evaluation's numbers win
            "v2": {"top1": v["v2"], "top5": 80.0, "n_images": 10000}, "real": {"top1": v["real"], "n_images": 46837},
            "sketch": {"top1": v["sketch"], "top5": 40.0, "n_images": 50889},
            "a": {"top1": v["a"], "top5": 10.0, "n_images": 7500},
            "r": {"top1": v["r"], "top5": 50.0, "n_images": 30000},
            "c": {"corruptions": {}, "mce": v["mce"], "mean_error": 60.0}})
    out = tmp / "t.md"
    result = make_table(*files, "-o", out, "--archs", "resnet18", "--attentions", "none,se,simam")
    rows = table_rows(out.read_text())
    return {"simam": simam, "final": final, "baseline": baseline, "variants": variants, "result": result,
            "md": {r["Attention"]: r for r in rows}, "csv": {r["attention_type"]: r for r in read_csv(tmp / "t.csv")},
            "text": out.read_text()}


def test_seeds_give_mean_std_and_n_for_best_and_final(seeds):
    row = seeds["md"]["SimAM"]
    assert row["Top-1"] == spread([v[0] for v in seeds["simam"].values()])
    assert row["Top-5"] == spread([v[1] for v in seeds["simam"].values()])
    assert row["Final Top-1"] == spread(list(seeds["final"].values()))
    csv_row = seeds["csv"]["simam"]
    assert int(csv_row["n"]) == 3 and csv_row["seeds"] == "0 1 2" and int(csv_row["final_n"]) == 3
    assert float(csv_row["top1"]) == pytest.approx((71.0 + 71.4 + 71.9) / 3)
    assert float(csv_row["delta_top1"]) == pytest.approx((71.0 + 71.4 + 71.9) / 3 - 71.31, abs=1e-6)
    assert "mean ± std over seeds 0, 1, 2" in seeds["text"]
    baseline = seeds["md"]["baseline"]
    assert baseline["Top-1"] == spread([v[0] for v in seeds["baseline"].values()])
    assert seeds["md"]["SE"]["Top-1"] == "not evaluated"


def test_delta_against_the_baseline_is_paired_by_seed(seeds):
    # seeds 0 and 1 are in both rows: differences 0.9 and 1.1 (seed 2's SimAM and seed 5's baseline are unpaired)
    diffs = [seeds["simam"][s][0] - seeds["baseline"][s][0] for s in (0, 1)]
    assert seeds["md"]["SimAM"]["Δ Top-1 vs baseline"] == (
        f"{statistics.fmean(diffs):+.2f} ± {statistics.stdev(diffs):.2f} (n=2)") == "+1.00 ± 0.14 (n=2)"
    csv_row = seeds["csv"]["simam"]
    assert float(csv_row["delta_top1_vs_baseline"]) == pytest.approx(1.0)
    assert float(csv_row["delta_top1_vs_baseline_std"]) == pytest.approx(statistics.stdev(diffs), abs=1e-6)
    assert int(csv_row["baseline_pairs"]) == 2
    assert seeds["md"]["baseline"]["Δ Top-1 vs baseline"] == "–" and seeds["csv"]["none"]["baseline_pairs"] == "0"


def test_variant_columns_in_markdown_and_csv(seeds):
    row, csv_row = seeds["md"]["SimAM"], seeds["csv"]["simam"]
    for header, key, column in (("V2", "v2", "v2_top1"), ("ReaL", "real", "real_top1"),
                                ("Sketch", "sketch", "sketch_top1"), ("-A", "a", "a_top1"), ("-R", "r", "r_top1"),
                                ("-C mCE", "mce", "c_mce")):
        values = [v[key] for v in seeds["variants"].values()]
        assert row[header] == spread(values)
        assert float(csv_row[column]) == pytest.approx(sum(values) / 2)
    assert seeds["md"]["baseline"]["V2"] == "–" and seeds["csv"]["none"]["v2_top1"] == ""


def test_a_variants_json_alone_gives_the_val_numbers(tmp_path):
    data = {"arch": "resnet50", "attention_type": "simam", "attention_param": 0.1, "seed": None, "epoch": 99,
            "checkpoint": "official/model_best_in_100_epochs.pth.tar", "val_resize_size": 256, "val_crop_size": 224,
            "sets": {"val": "v", "v2": "w"}, "val": {"top1": 77.45, "top5": 93.66, "n_images": 50000},
            "v2": {"top1": 65.5, "top5": 86.0, "n_images": 10000}}
    (tmp_path / "v.json").write_text(json.dumps(data))
    make_table(tmp_path / "v.json", "-o", tmp_path / "t.md", "--archs", "resnet50", "--attentions", "simam")
    row = table_rows((tmp_path / "t.md").read_text())[0]
    assert (row["Top-1"], row["Δ Top-1"], row["V2"]) == ("77.45", "+0.00", "65.50")
    assert "ReaL" not in row and "Final Top-1" not in row
