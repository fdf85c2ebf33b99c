"""scripts/benchmark.py --suite table (the cost columns of the results table) and their join by
scripts/make_results_table.py --benchmark (tiny sizes: the figures are not asserted, only their consistency)."""

import csv
import json

import pytest
import torch

import networks
from scripts import benchmark
from scripts import make_results_table as table

pytestmark = pytest.mark.usefixtures("one_thread")


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """A table run of ResNet-18 without attention, with SimAM and with SE (plain PyTorch SimAM kernels)."""
    output = tmp_path_factory.mktemp("bench") / "table-cpu.json"
    compiled_available = networks.attentions.simam_kernels.compiled_available
    networks.attentions.simam_kernels.compiled_available = lambda device: False
    try:
        result = benchmark.main(["--suite", "table", "--archs", "resnet18", "--attentions", "none,simam,se",
                                 "-b", "2", "--image-size", "32", "--steps", "1", "--warmup", "1", "--rounds", "1",
                                 "--no-compile", "--num-classes", "10", "--output", str(output)])
    finally:
        networks.attentions.simam_kernels.compiled_available = compiled_available
    return {"result": result, "json": output, "csv": output.with_suffix(".csv")}


def test_table_csv_has_one_row_per_arch_and_attention(measured):
    rows = read_csv(measured["csv"])
    assert list(rows[0]) == benchmark.TABLE_COLUMNS
    assert [(r["arch"], r["attention_type"]) for r in rows] == [("resnet18", a) for a in ("none", "simam", "se")]
    assert json.loads(measured["json"].read_text())["rows"] == json.loads(json.dumps(measured["result"]["rows"]))
    for row in rows:
        for column in ("train_images_per_sec", "infer_images_per_sec", "saved_activation_mb_per_image",
                       "peak_memory_mb"):
            assert float(row[column]) > 0, (row["attention_type"], column)
        assert row["peak_memory_kind"] == "saved_tensors" and row["device"] == "cpu"
        assert (row["batch_size"], row["image_size"], row["compile"]) == ("2", "32", "False")
    params = {r["attention_type"]: r["attention_param"] for r in rows}
    assert params == {"none": "", "simam": "0.1", "se": "16"}


def test_table_saved_memory_equals_an_independent_count(measured):
    """Saved activations per image: SimAM fused with its BN keeps little more than the plain network, and the
    figure is the autograd count of the model under the same settings (bf16 autocast where native, channels_last)."""
    rows = {r["attention_type"]: r for r in measured["result"]["rows"]}
    # a few fp32 statistics per channel: at 32 px (1x1 maps in the last stage) they weigh about 1.6% in fp32
    assert rows["simam"]["saved_activation_mb_per_image"] <= 1.03 * rows["none"]["saved_activation_mb_per_image"]
    assert rows["se"]["saved_activation_mb_per_image"] > rows["none"]["saved_activation_mb_per_image"]
    model = networks.create_net("resnet18", "none", num_classes=10).to(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    amp = rows["none"]["amp"]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bfloat16"):
        counted = benchmark.saved_for_backward(model, images)
    assert rows["none"]["saved_activation_mb_per_image"] == pytest.approx(counted["activations"] / 2 ** 20 / 2)


def test_results_table_joins_the_cost_columns(measured, tmp_path):
    out = tmp_path / "imagenet.md"
    made = table.main(table.get_args_parser().parse_args(
        ["-o", str(out), "--archs", "resnet18", "--attentions", "none,eca,simam", "--benchmark", str(measured["csv"])]))
    text = out.read_text()
    assert "| Model | Attention | Params | FLOPs | Train img/s | Infer img/s | Saved MB/img | Peak MB | Top-1 |" in text
    assert f"--benchmark {measured['csv']}" in text and "1 row(s) have no measurement" in text
    rows = read_csv(made["csv"])
    assert list(rows[0])[:9] == ["arch", "attention_type", "attention_param", "params_m", "gflops",
                                 "train_images_per_sec", "infer_images_per_sec", "saved_activation_mb_per_image",
                                 "peak_memory_mb"]
    measured_rows = {r["attention_type"]: r for r in read_csv(measured["csv"])}
    by_attention = {r["attention_type"]: r for r in rows}
    assert by_attention["eca"]["train_images_per_sec"] == ""
    assert float(by_attention["simam"]["peak_memory_mb"]) == pytest.approx(
        float(measured_rows["simam"]["peak_memory_mb"]))
    # without --benchmark the table is unchanged
    plain = table.main(table.get_args_parser().parse_args(["-o", str(tmp_path / "plain.md"), "--archs", "resnet18"]))
    assert list(read_csv(plain["csv"])[0]) == table.CSV_COLUMNS


def test_results_table_rejects_a_csv_that_is_not_a_table(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert table.cli(["-o", str(tmp_path / "t.md"), "--benchmark", str(bad)]) == 2
    assert "is not a CSV of `scripts/benchmark.py --suite table`" in capsys.readouterr().err


def test_benchmarks_record_the_default_attention_parameter(tmp_path):
    result = benchmark.main(["--suite", "eval", "-a", "resnet18", "--attention_type", "simam", "-b", "1",
                             "--image-size", "32", "--steps", "1", "--warmup", "1", "--rounds", "1", "--no-compile",
                             "--no-baseline", "--num-classes", "10", "--output", str(tmp_path / "eval.json")])
    assert result["attention_param"] == 0.1 and result["command"].startswith("python scripts/benchmark.py")


def test_benchmark_models_carry_their_own_simam_implementation():
    """The release baseline runs the paper's formula, the recommended settings SimAM's kernels, side by side in
    one process (no global switch between steps)."""
    args = benchmark.get_args_parser().parse_args(["--suite", "train", "-b", "1", "--image-size", "32",
                                                   "--num-classes", "10", "--no-compile"])
    benches = benchmark.recommended_and_release(args, torch.device("cpu"))
    assert networks.get_simam_implementation(benches["release"].module) == "reference"
    assert networks.get_simam_implementation(benches["recommended"].module) == "auto"
    assert networks.fused_pairs(benches["recommended"].module) == 8 and networks.fused_pairs(
        benches["release"].module) == 0


def test_table_says_whether_the_timed_calls_ran_compiled(monkeypatch, capsys):
    """``compile`` is True only where every timed step and inference ran compiled graphs: with a budget of one graph
    per model, the evaluation graph is past it and inference runs eager (dynamo says so only in its log)."""
    monkeypatch.setattr(networks.attentions.simam_kernels, "compiled_available", lambda device: False)
    argv = ["--suite", "table", "--archs", "resnet18", "--attentions", "none", "-b", "2", "--image-size", "32",
            "--steps", "1", "--warmup", "1", "--rounds", "1", "--num-classes", "10", "--compile-backend", "eager",
            "--json"]
    compiled = {}
    try:
        for limit in (2, 1):
            torch._dynamo.reset()
            with torch._dynamo.config.patch(recompile_limit=limit):
                compiled[limit] = benchmark.main(argv)["rows"][0]["compile"]
    finally:
        torch._dynamo.reset()
    assert compiled == {2: True, 1: False}
    assert "resnet18 with none (none): the timed infer calls ran eager" in capsys.readouterr().err
