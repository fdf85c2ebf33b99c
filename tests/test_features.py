"""features_only backbones and FX feature extraction, against the classification network's own intermediate outputs."""

import pytest
import torch
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import networks
from helpers import randomize_bn_statistics
from networks.attentions import simam_kernels

pytestmark = pytest.mark.usefixtures("one_thread")


OTHER_ATTENTIONS = [t for t in networks.ATTENTIONS.names() if t != "simam"]
CASES = [(arch, "simam") for arch in networks.ARCHS.names()] + [
    (arch, attention) for arch in ("resnet18", "mobilenet_v2") for attention in OTHER_ATTENTIONS]
ALL_LEVELS = (0, 1, 2, 3, 4)
SIZE = 64


def stage_outputs(model, nodes, x):
    """The outputs of the modules named ``nodes`` during ``model(x)``, captured with forward hooks."""
    captured = {}
    hooks = [model.get_submodule(node).register_forward_hook(
        lambda module, inputs, output, node=node: captured.__setitem__(node, output.clone())) for node in nodes]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return [captured[node] for node in nodes]


@pytest.mark.parametrize("arch,attention", CASES)
def test_features_equal_the_classification_network(arch, attention):
    spec = networks.ARCHS.get(arch)
    model = randomize_bn_statistics(networks.create_net(arch, attention, num_classes=5)).eval()
    backbone = networks.create_net(arch, attention, num_classes=5, features_only=True, out_indices=ALL_LEVELS)
    networks.load_backbone(backbone, model.state_dict())  # strict, classifier dropped
    backbone.eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    expected = stage_outputs(model, spec.feature_nodes, x)

    with torch.no_grad():
        features = backbone(x)
    info = backbone.feature_info
    assert info.reduction() == [2, 4, 8, 16, 32] and info.module_name() == list(spec.feature_nodes)
    assert [tuple(f.shape) for f in features] == [
        (2, c, SIZE // r, SIZE // r) for c, r in zip(info.channels(), info.reduction())]
    for got, want in zip(features, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)

    # torchvision's FX feature extraction on the classification network itself
    train_nodes, eval_nodes = get_graph_node_names(model)
    for nodes in (train_nodes, eval_nodes):  # a module's nodes are named after it (layer1 -> layer1.1.relu_1)
        assert all(any(n == node or n.startswith(node + ".") for n in nodes) for node in spec.feature_nodes)
    extractor = create_feature_extractor(model, {node: str(i) for i, node in enumerate(spec.feature_nodes)})
    with torch.no_grad():
        extracted = extractor(x)
    for i, want in enumerate(expected):
        torch.testing.assert_close(extracted[str(i)], want, rtol=0, atol=1e-6)


def test_simam_is_one_leaf_call_in_fx_graphs():
    model = randomize_bn_statistics(networks.create_net("resnet18", "simam", num_classes=5)).eval()
    _, eval_nodes = get_graph_node_names(model)
    simam_nodes = [n for n in eval_nodes if n.endswith("simam_fused")]
    assert len(simam_nodes) == 8 and "layer2.1.conv2.1.simam_fused" in simam_nodes  # one per BasicBlock
    extractor = create_feature_extractor(model, {"layer2.1.conv2.0": "conv", "layer2.1.conv2.1.simam_fused": "simam"})
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    out = extractor(x)
    torch.testing.assert_close(out["simam"], networks.simam(out["conv"], 0.1), rtol=1e-5, atol=1e-6)
    # the leaf keeps the fused function's backward: the same gradient as the eager network's
    grad_fx, = torch.autograd.grad(out["simam"].square().sum(), x)
    captured = {}
    hook = model.layer2[1].conv2[1].register_forward_hook(lambda m, inputs, output: captured.setdefault("y", output))
    model(x)
    hook.remove()
    grad_eager, = torch.autograd.grad(captured["y"].square().sum(), x)
    torch.testing.assert_close(grad_fx, grad_eager, rtol=1e-5, atol=1e-6)


def test_out_indices_and_feature_info():
    backbone = networks.create_net("resnet50", "simam", features_only=True, out_indices=(2, 4))
    assert backbone.feature_info.channels() == [512, 2048] and backbone.feature_info.reduction() == [8, 32]
    assert [entry["module"] for entry in backbone.feature_info] == ["layer2", "layer4"]
    features = backbone.eval()(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape) for f in features] == [(1, 512, 8, 8), (1, 2048, 2, 2)]
    assert not hasattr(backbone, "fc") and not hasattr(backbone, "avgpool")
    default = networks.create_net("mobilenet_v2", "simam", features_only=True)
    assert default.feature_info.channels() == [24, 32, 96, 1280] and default.feature_info.reduction() == [4, 8, 16, 32]
    for bad in [(), (4, 2), (1, 5), (-1,), (1, 1)]:
        with pytest.raises(ValueError, match="out_indices"):
            networks.create_net("resnet18", features_only=True, out_indices=bad)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_release_checkpoint_loads_strictly(tmp_path, arch):
    """An official-format file ('module.' keys, 'arch', 'best_acc1', optimizer state) and a bare state dict load
    into the features_only backbone with strict=True: every backbone weight arrives, the classifier is dropped."""
    model = randomize_bn_statistics(networks.create_net(arch, "simam"))
    state_dict = model.state_dict()
    release = tmp_path / "release.pth.tar"
    torch.save({"epoch": 100, "arch": arch, "best_acc1": torch.tensor(71.2),
                "optimizer": {"state": {}, "param_groups": []},
                "state_dict": {"module." + k: v for k, v in state_dict.items()}}, release)
    bare = tmp_path / "bare.pth"
    torch.save(state_dict, bare)
    for path in (release, bare):
        backbone = networks.load_backbone(networks.create_net(arch, "simam", features_only=True), path)
        loaded = backbone.state_dict()
        assert set(loaded) == {k for k in state_dict if not k.startswith(("fc.", "classifier."))}
        assert all(torch.equal(loaded[k], state_dict[k]) for k in loaded)
    with pytest.raises(ValueError, match="Missing key"):  # another attention's checkpoint does not fit
        networks.load_backbone(networks.create_net(arch, "se", features_only=True), release)


def test_whole_model_compile_still_fuses_simam():
    """Under torch.compile SimAM stays the fused autograd function (dynamo captures it whole, with its
    memory-efficient backward); only exporters and tracers see the plain formula."""
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), networks.SimAM(), torch.nn.ReLU())
    x = torch.randn(2, 3, 12, 12)
    torch._dynamo.reset()
    out = torch.compile(model, backend=capture)(x)
    torch.testing.assert_close(out, model(x))
    targets = [str(node.target) for gm in graphs for node in gm.graph.nodes]
    assert any("autograd_function_apply" in t for t in targets), targets
    assert not simam_kernels.exporting()


def test_compiled_available_is_cached(monkeypatch):
    simam_kernels._compiler_found.cache_clear()
    calls = []
    monkeypatch.setattr(simam_kernels.shutil, "which", lambda name: calls.append(name) or "/bin/cc")
    for _ in range(3):
        assert simam_kernels.compiled_available(torch.device("cpu"))
    assert len(calls) == 1
    monkeypatch.setattr(simam_kernels, "_compile_failed", {"cpu"})  # a failed compilation still turns it off
    assert not simam_kernels.compiled_available(torch.device("cpu"))
    simam_kernels._compiler_found.cache_clear()
