"""scripts/export.py: ONNX (run with onnxruntime), torch.export and TorchScript files against eager PyTorch."""

import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models.resnet import BasicBlock, Bottleneck

import networks
from helpers import randomize_bn_statistics
from scripts import export

pytestmark = pytest.mark.usefixtures("one_thread")


SIZE = 64
# Every network with SimAM goes to ONNX and ExportedProgram (one torch.export for both); other attentions and
# TorchScript are sampled.
SIMAM_ARCHS = networks.ARCHS.names()
CASES = [("onnx", "resnet18", "eca"), ("exported_program", "resnet18", "srm"),
         ("exported_program", "resnet18", "se")] + [
    ("torchscript", arch, attention) for arch, attention in [
        ("resnet18", "simam"), ("resnext50_32x4d", "simam"), ("mobilenet_v2", "simam"), ("resnet18", "cbam"),
        ("mobilenet_v2", "eca")]]


def trained_like(model, size=SIZE):
    """Random BN affine parameters, running statistics measured on random images, and residual branches that end
    in a small BN scale, as in trained ResNets: the network is as well conditioned as a trained one (a random deep
    one amplifies fp32 rounding to 1e-3 between any two implementations), so a 1e-4 tolerance means what it says."""
    randomize_bn_statistics(model)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: the statistics of the batch below
    with torch.no_grad():
        model.train()(torch.randn(8, 3, size, size))
        for block in model.modules():
            if isinstance(block, (BasicBlock, Bottleneck)):
                last_bn = block.bn2 if isinstance(block, BasicBlock) else block.bn3
                last_bn = last_bn[0] if isinstance(last_bn, torch.nn.Sequential) else last_bn  # (BN, attention)
                last_bn.weight.mul_(0.2)
    return model.eval()


def opaque_operators(fmt, path):
    """Operators of the file's graph that are not the format's standard ones (a custom function would be)."""
    if fmt == "onnx":
        import onnx

        assert not onnx.load(str(path)).functions  # no local functions either
        return {op for op in export.graph_operators(fmt, str(path)) if "::" in op}  # a custom domain
    if fmt == "exported_program":
        return {op for op in export.graph_operators(fmt, str(path)) if not op.startswith("aten.")}
    return {op for op in export.graph_operators(fmt, str(path)) if op == "prim::PythonOp"
            or not op.startswith(("aten::", "prim::"))}


SIGMOID = {"onnx": "Sigmoid", "exported_program": "aten.sigmoid.default", "torchscript": "aten::sigmoid"}
SUFFIX = {"onnx": ".onnx", "exported_program": ".pt2", "torchscript": ".pt"}


def check_logits(model, run):
    """``run``'s logits equal eager PyTorch's for batch sizes other than the export's (export.EXPORT_BATCH = 2)."""
    for batch in (1, 3):
        x = torch.randn(batch, 3, SIZE, SIZE)
        with torch.no_grad():
            got, want = run(x), model(x)
        assert got.shape == (batch, 10)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def check_file(model, fmt, path, simam):
    """The file's logits equal eager PyTorch's; its graph has only the format's standard operators, SimAM's
    formula among them."""
    check_logits(model, export.load_exported(fmt, str(path)))
    assert not opaque_operators(fmt, path)
    if simam:
        assert SIGMOID[fmt] in export.graph_operators(fmt, str(path))


@pytest.mark.parametrize("arch", SIMAM_ARCHS)
def test_simam_networks_to_onnx_and_exported_program(tmp_path, arch):
    """One torch.export per network: the program itself (saving and loading .pt2 files is tested by the CLI
    tests below) and its ONNX file, run with onnxruntime."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = trained_like(networks.create_net(arch, "simam", num_classes=10))
    program = export.exported_program(model, SIZE)
    check_logits(model, program.module())
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert SIGMOID["exported_program"] in targets and all(t.startswith("aten.") for t in targets), targets
    export.write_exported(program, "onnx", str(tmp_path / "model.onnx"))
    check_file(model, "onnx", tmp_path / "model.onnx", simam=True)


@pytest.mark.parametrize("fmt,arch,attention", CASES)
def test_exported_logits_equal_eager(tmp_path, fmt, arch, attention):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    model = trained_like(networks.create_net(arch, attention, num_classes=10))
    path = tmp_path / f"model{SUFFIX[fmt]}"
    export.export_model(model, fmt, str(path), SIZE)
    check_file(model, fmt, path, simam=attention == "simam")


def our_checkpoint(path, arch="resnet18", attention_type="simam", attention_param=0.2, num_classes=7, **extra):
    model = randomize_bn_statistics(networks.create_net(arch, attention_type, attention_param, num_classes)).eval()
    torch.save({"epoch": 3, "arch": arch, "attention_type": attention_type, "attention_param": attention_param,
                "num_classes": num_classes, "state_dict": model.state_dict(), **extra}, path)
    return model


def parity_line(capsys):
    out = capsys.readouterr().out.strip().splitlines()
    assert "max |delta| of logits vs eager PyTorch" in out[0], out
    return out


def test_cli_onnx_with_images_and_benchmark(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    model = our_checkpoint(tmp_path / "ckpt.pth.tar")
    images = []
    for i in range(2):
        images.append(tmp_path / f"{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(images[-1])
    out_file = tmp_path / "out" / "model.onnx"
    assert export.cli([str(tmp_path / "ckpt.pth.tar"), "--format", "onnx", "-o", str(out_file), "--image-size", "32",
                       "--images", *map(str, images),
                       "--benchmark", "--benchmark-batch", "2", "--benchmark-rounds", "2"]) == 0
    lines = parity_line(capsys)
    assert "resnet18 + simam (e_lambda=0.2)" in lines[0] and "on 2 images" in lines[0]
    assert lines[1].startswith("benchmark") and "img/s" in lines[1] and lines[1].endswith("x")
    run = export.load_exported("onnx", str(out_file))  # the recorded lambda and class count were used
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(run(x), model(x), rtol=0, atol=1e-4)


def test_cli_release_checkpoint_and_bare_state_dict(tmp_path, capsys):
    """The network comes from the release's 'arch' field and key layout, or from the keys alone."""
    x = torch.randn(2, 3, 32, 32)
    for arch, layout, fmt in [("resnet18", "release", "exported_program"), ("mobilenet_v2", "bare", "torchscript")]:
        model = randomize_bn_statistics(networks.create_net(arch, "simam", num_classes=5)).eval()
        path = tmp_path / f"{arch}.pth.tar"
        if layout == "release":  # 'arch' only, keys with 'module.'
            torch.save({"epoch": 100, "arch": arch, "best_acc1": torch.tensor(72.0),
                        "state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, path)
        else:
            torch.save(model.state_dict(), path)
        out_file = tmp_path / f"{arch}{SUFFIX[fmt]}"
        assert export.cli([str(path), "--format", fmt, "-o", str(out_file), "--image-size", "32"]) == 0
        assert f"{arch} + simam (e_lambda=0.1)" in parity_line(capsys)[0]
        with torch.no_grad():
            torch.testing.assert_close(export.load_exported(fmt, str(out_file))(x), model(x), rtol=0, atol=1e-4)


def test_cli_eval_ema(tmp_path, capsys):
    """--eval-ema exports checkpoint['model_ema']: an AveragedModel's state dict ('module.' keys, 'n_averaged'),
    here also saved from DDP ('module.module.')."""
    ema_model = randomize_bn_statistics(networks.create_net("resnet18", "simam", num_classes=7)).eval()
    averaged = torch.optim.swa_utils.AveragedModel(ema_model)
    ema = {"module." + k: v for k, v in averaged.state_dict().items()}
    assert "module.n_averaged" in ema and "module.module.conv1.weight" in ema
    our_checkpoint(tmp_path / "ckpt.pth.tar", attention_param=0.1, model_ema=ema)
    out_file = tmp_path / "ema.pt"
    assert export.cli([str(tmp_path / "ckpt.pth.tar"), "--format", "torchscript", "-o", str(out_file),
                       "--image-size", "32", "--eval-ema"]) == 0
    parity_line(capsys)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        exported = export.load_exported("torchscript", str(out_file))(x)
        torch.testing.assert_close(exported, ema_model(x), rtol=0, atol=1e-4)


def fails(argv, capsys, *expected):
    assert export.cli([*map(str, argv)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for text in expected:
        assert text in err, err


def test_cli_bad_input(tmp_path, capsys, monkeypatch):
    ckpt = tmp_path / "ckpt.pth.tar"
    our_checkpoint(ckpt)
    out = ["-o", tmp_path / "model.pt"]
    fails(["nowhere.pth", "--format", "torchscript", *out], capsys, "checkpoint not found", "nowhere.pth")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    fails([tmp_path / "notes.txt", "--format", "torchscript", *out], capsys, "not a checkpoint")
    fails([ckpt, "--format", "tflite", *out], capsys, "invalid choice: 'tflite'")
    fails([ckpt, "--format", "torchscript"], capsys, "-o/--output")
    fails([ckpt, "--format", "torchscript", "-a", "vgg16", *out], capsys, "unknown arch 'vgg16'")
    fails([ckpt, "--format", "torchscript", "-a", "resnet34", *out], capsys, "does not fit resnet34")
    fails([ckpt, "--format", "torchscript", "--eval-ema", *out], capsys, "no EMA weights")
    fails([ckpt, "--format", "torchscript", "--images", tmp_path / "missing.jpg", *out], capsys, "image not found")
    fails([ckpt, "--format", "exported_program", "-o", tmp_path / "model.pt"], capsys, "end in .pt2")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    fails([tmp_path / "other.pth", "--format", "torchscript", *out], capsys, "cannot tell which network", "give -a")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    fails([ckpt, "--format", "onnx", "-o", tmp_path / "model.onnx"], capsys,
          "needs the package onnxruntime", "pip install")
    assert not (tmp_path / "model.pt").exists() and not (tmp_path / "model.onnx").exists()
