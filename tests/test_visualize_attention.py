"""scripts/visualize_attention.py: the figure, Grad-CAM and SimAM maps against independent computations,
and one-line errors for bad input (including a checkpoint carrying a pickle payload)."""

import importlib.util
import os
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import networks
from helpers import randomize_bn_statistics

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _load_script():
    spec = importlib.util.spec_from_file_location("visualize_attention", ROOT / "scripts" / "visualize_attention.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


va = _load_script()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two small JPEGs, a SimAM-ResNet-18 checkpoint in our format and a plain ResNet-18 bare state dict."""
    root = tmp_path_factory.mktemp("viz")
    rng = np.random.default_rng(0)
    images = []
    for i in range(2):
        path = root / f"img{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path, quality=90)
        images.append(str(path))
    torch.manual_seed(0)
    simam_model = networks.create_net("resnet18", "simam", num_classes=3)
    simam_ckpt = root / "simam.pth.tar"
    torch.save({"state_dict": simam_model.state_dict(), "arch": "resnet18", "attention_type": "simam",
                "attention_param": 0.1, "num_classes": 3}, simam_ckpt)
    plain_model = networks.create_net("resnet18", "none", num_classes=3)
    plain_ckpt = root / "plain.pth"
    torch.save(plain_model.state_dict(), plain_ckpt)
    return {"root": root, "images": images, "simam": str(simam_ckpt), "plain": str(plain_ckpt)}


def _argv(images, checkpoints, output, *extra):
    return ["--images", *images, "--checkpoints", *checkpoints, "--image-size", "32", "--resize-size", "36",
            "-o", str(output), *extra]


def _args(images, checkpoints, output, *extra):
    return va.get_args_parser().parse_args(_argv(images, checkpoints, output, *extra))


def _fails(capsys, *argv_parts):
    """The command line's error: exit status 2 and one line on stderr; returns the line."""
    assert va.cli(_argv(*argv_parts)) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def test_figure_is_written(setup, capsys):
    output = setup["root"] / "out" / "attention.png"
    returned = va.main(_args(setup["images"], [setup["simam"], setup["plain"]], output, "--labels", "SimAM", "plain"))
    assert returned == str(output)
    assert str(output) in capsys.readouterr().out
    assert output.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(str(output))
    assert image.ndim == 3 and image.shape[2] in (3, 4) and image.shape[0] > 100 and image.shape[1] > 100


def test_networks_are_identified(setup):
    net = va.load_network(setup["simam"])
    assert (net.arch, net.attention_type, net.attention_param, net.num_classes) == ("resnet18", "simam", 0.1, 3)
    net = va.load_network(setup["plain"])  # bare state dict: inferred from the key layout
    assert (net.arch, net.attention_type, net.attention_param, net.num_classes) == ("resnet18", "none", None, 3)


def _independent_grad_cam(model, x, layer, target=None):
    """Grad-CAM with torch.autograd.grad on the activation captured by a plain forward hook."""
    captured = {}
    handle = layer.register_forward_hook(lambda m, i, o: captured.__setitem__("a", o))
    with torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        logits = model(xg)
        handle.remove()
        target = int(logits[0].argmax()) if target is None else target
        (grad,) = torch.autograd.grad(logits[0, target], captured["a"])
    a = captured["a"][0].detach()
    weights = grad[0].mean(dim=(1, 2))
    raw = torch.clamp(torch.einsum("c,chw->hw", weights, a), min=0)
    up = F.interpolate(raw[None, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    up = up - up.min()
    return target, raw, up / up.max(), logits.softmax(1)[0, target].item()


@pytest.mark.parametrize("target", [None, 2])
def test_grad_cam_matches_independent_computation(target):
    torch.manual_seed(1)
    model = randomize_bn_statistics(networks.create_net("resnet18", "simam", num_classes=3)).eval()
    x = torch.randn(1, 3, 96, 96)
    expected_target, expected_raw, expected_cam, expected_p = _independent_grad_cam(model, x, model.layer4, target)
    e = va.explain(model, x, target)
    assert e.target == expected_target and e.predicted == int(model(x)[0].argmax())
    assert e.probability == pytest.approx(expected_p, rel=1e-5)
    assert expected_raw.max() > 0  # a non-trivial map
    torch.testing.assert_close(e.cam_raw, expected_raw, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(e.cam, expected_cam, rtol=1e-4, atol=1e-5)
    assert e.cam.shape == (96, 96) and e.cam.min() == 0 and e.cam.max() == pytest.approx(1)
    assert not any(p.grad is not None for p in model.parameters())  # explain leaves no gradients behind


def test_grad_cam_target_layer_mobilenet():
    model = networks.create_net("mobilenet_v2", "simam", num_classes=3).eval()
    assert va.target_layer(model) is model.features[-1]
    assert len(va.select_simam_modules(model)) == 4


def test_simam_map_formula():
    torch.manual_seed(2)
    x = torch.randn(2, 5, 6, 7) * 3 + 1
    lam = 0.3
    expected = torch.empty(2, 6, 7)
    for n in range(2):
        gates = []
        for c in range(5):
            ch = x[n, c].double()
            mu = ch.sum() / ch.numel()
            d = (ch - mu) ** 2
            v = d.sum() / (ch.numel() - 1)
            gates.append(1 / (1 + torch.exp(-(d / (4 * (v + lam)) + 0.5))))
        expected[n] = torch.stack(gates).mean(0).float()
    torch.testing.assert_close(va.simam_weight_map(x, lam), expected, rtol=1e-5, atol=1e-6)
    # the map is the channel mean of the module's own gate: SimAM(x) / x
    gate = networks.SimAM(e_lambda=lam)(x) / x
    torch.testing.assert_close(va.simam_weight_map(x, lam), gate.mean(1), rtol=1e-4, atol=1e-5)


def test_one_simam_map_per_stage():
    model = networks.create_net("resnet18", "simam", 0.1, num_classes=3).eval()
    chosen = va.select_simam_modules(model)
    assert [name for name, _ in chosen] == [f"layer{i}.1.conv2.1" for i in range(1, 5)]
    e = va.explain(model, torch.randn(1, 3, 32, 32))
    assert len(e.simam_maps) == 4
    assert all(m.shape == (32, 32) for _, m in e.simam_maps)
    assert va.explain(networks.create_net("resnet18", num_classes=3).eval(), torch.randn(1, 3, 32, 32)).simam_maps == []


def test_missing_image_is_one_line(setup, tmp_path, capsys):
    missing = str(tmp_path / "nope.jpg")
    assert missing in _fails(capsys, [missing], [setup["simam"]], tmp_path / "o.png")
    assert not (tmp_path / "o.png").exists()


def test_bad_checkpoints_are_one_line(setup, tmp_path, capsys):
    not_ckpt = tmp_path / "notes.pth"
    not_ckpt.write_text("not a checkpoint")
    wrong = tmp_path / "r34.pth"
    torch.save({"state_dict": networks.create_net("resnet34", "simam", num_classes=3).state_dict(),
                "arch": "resnet18", "attention_type": "simam", "attention_param": 0.1}, wrong)
    for path, extra in ((tmp_path / "missing.pth", ()), (not_ckpt, ()), (wrong, ()),
                        (setup["simam"], ("-a", "resnet50"))):
        _fails(capsys, setup["images"][:1], [str(path)], tmp_path / "o.png", *extra)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_pickle_payload_is_refused(setup, tmp_path, capsys):
    marker = tmp_path / "payload_ran"
    evil = tmp_path / "evil.pth.tar"
    sd = networks.create_net("resnet18", "simam", num_classes=3).state_dict()
    torch.save({"state_dict": sd, "arch": "resnet18", "attention_type": "simam", "extra": _Payload(str(marker))}, evil)
    assert not marker.exists()
    assert "refused" in _fails(capsys, setup["images"][:1], [str(evil)], tmp_path / "o.png")
    assert not marker.exists()
