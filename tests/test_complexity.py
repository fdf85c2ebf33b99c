"""Params/FLOPs reproduce the paper's columns; the script prints them as text, JSON and a table."""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from networks import complexity, create_net, measure_complexity

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "model_complexity.py"

# The paper's SimAM rows (Table 3 / the release's README): params (M), FLOPs (G)
PAPER_SIMAM_ROWS = {
    "resnet18": (11.69, 1.82), "resnet34": (21.80, 3.67), "resnet50": (25.56, 4.11),
    "resnet101": (44.55, 7.83), "resnext50_32x4d": (25.03, 4.26), "mobilenet_v2": (3.50, 0.31),
}


@pytest.mark.parametrize("arch", PAPER_SIMAM_ROWS)
def test_paper_params_and_flops_of_the_simam_rows(arch):
    params_m, gflops = PAPER_SIMAM_ROWS[arch]
    c = complexity(arch, "simam", 0.1)
    assert round(c.params_m, 2) == params_m
    assert round(c.gflops, 2) == gflops
    assert c.gflops_all_ops > c.gflops


def test_simam_adds_no_parameters_and_no_paper_flops():
    plain, with_simam = complexity("resnet18"), complexity("resnet18", "simam")
    assert plain.params_m == with_simam.params_m and plain.gflops == with_simam.gflops


def test_simam_own_ops_count_every_element_it_gates():
    """SimAM follows each Bottleneck's 3x3 conv; at 224 px those outputs are 3 x 64x56x56, 4 x 128x28x28,
    6 x 256x14x14 and 3 x 512x7x7 elements. Each costs 8 operations, each channel 4 more."""
    stages = [(3, 64, 56), (4, 128, 28), (6, 256, 14), (3, 512, 7)]
    elements = sum(n * c * s * s for n, c, s in stages)
    channels = sum(n * c for n, c, _ in stages)
    c = complexity("resnet50", "simam")
    assert round((c.gflops_all_ops - c.gflops) * 1e9) == 8 * elements + 4 * channels


def test_paper_convention_differs_from_thops_defaults():
    """thop's defaults count 4 ops per affine-BN element and pooling adds: MobileNetV2 0.33 G, paper 0.31 G."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import thop
    macs, _ = thop.profile(create_net("mobilenet_v2", "simam").eval(), (torch.randn(1, 3, 224, 224),), verbose=False)
    assert round(macs / 1e9, 2) == 0.33


def test_measuring_leaves_the_model_untouched():
    model = create_net("resnet18", "se", num_classes=10).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    c = measure_complexity(model, image_size=64)
    assert model.training and model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert c.params_m == sum(p.numel() for p in model.parameters()) / 1e6
    assert not model._forward_hooks and not any(m._forward_hooks for m in model.modules())


def run_script(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT)


def test_script_json_line():
    result = run_script("-a", "resnet50", "--attention_type", "simam", "--attention_param", "0.1", "--json")
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["arch"] == "resnet50" and row["attention_type"] == "simam" and row["attention_param"] == 0.1
    assert round(row["params_m"], 2) == 25.56 and round(row["gflops"], 2) == 4.11
    assert row["gflops_all_ops"] > row["gflops"]


def test_script_text_line_and_defaults():
    result = run_script("-a", "mobilenet_v2", "--attention_type", "simam")
    assert result.returncode == 0, result.stderr
    assert "mobilenet_v2 + simam (e_lambda=0.1)" in result.stdout and "params 3.50 M" in result.stdout
    assert "FLOPs 0.31 G" in result.stdout


def test_script_all_table():
    result = run_script("--all", "--image-size", "32")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("| Model | Attention |") and len(lines) == 2 + 7 * 6
    row = next(line for line in lines if line.startswith("| resnet34 | se |"))
    expected = complexity("resnet34", "se", image_size=32)
    assert f"| {expected.params_m:.2f} | {expected.gflops:.2f} |" in row


@pytest.mark.parametrize("args,message", [
    (("-a", "resnet51"), "unknown arch 'resnet51'; valid choices:"),
    (("--attention_type", "simam", "--attention_param", "-1"), "lambda must be > 0"),
])
def test_script_bad_input_is_one_line(args, message):
    result = run_script(*args)
    assert result.returncode != 0
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
