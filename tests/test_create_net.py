"""create_net: every arch x attention trains, names and parameters are validated, registries drive it."""

import pytest
import torch
from torch import nn

import networks
from networks import ARCHS, ATTENTIONS, AttentionSpec, SimAM, create_attn, create_net
from networks.placement import AFTER_BRANCH_BN

ALL_ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "mobilenet_v2"]
ALL_ATTENTIONS = ["none", "se", "cbam", "eca", "srm", "simam"]
BLOCKS = {"resnet18": 8, "resnet34": 16, "resnet50": 16, "resnet101": 33, "resnet152": 50,
          "resnext50_32x4d": 16, "mobilenet_v2": 17}


def test_registries_list_exactly_the_supported_names():
    assert ARCHS.names() == ALL_ARCHS
    assert ATTENTIONS.names() == ALL_ATTENTIONS


@pytest.mark.parametrize("attention", ALL_ATTENTIONS)
@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_forward_and_backward(arch, attention):
    model = create_net(arch, attention, num_classes=5).train()
    x = torch.randn(2, 3, 64, 64)
    y = model(x)
    assert y.shape == (2, 5)
    y.logsumexp(dim=1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_one_simam_per_block_with_the_default_lambda(arch):
    lambdas = [m.e_lambda for m in create_net(arch, "simam").modules() if isinstance(m, SimAM)]
    assert lambdas == [0.1] * BLOCKS[arch]  # 0.1 as in every ImageNet run, not the release CLI's 4
    assert {m.e_lambda for m in create_net(arch, "simam", 4e-4).modules() if isinstance(m, SimAM)} == {4e-4}


def test_names_are_case_insensitive():
    assert isinstance(create_net("ResNet18", "SimAM").layer1[0].conv2[1], SimAM)


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(arch="resnet19"), "unknown arch 'resnet19'; valid choices: resnet18, resnet34, resnet50, resnet101, "
                            "resnet152, resnext50_32x4d, mobilenet_v2"),
    (dict(arch="resnet18", attention_type="bam"), "unknown attention type 'bam'; valid choices: "
                                                  "none, se, cbam, eca, srm, simam"),
    (dict(arch="resnet18", attention_type="simam", attention_param=0), "lambda must be > 0, got 0"),
    (dict(arch="resnet18", attention_type="simam", attention_param=-0.1), "lambda must be > 0"),
    (dict(arch="resnet18", attention_type="se", attention_param=0.5), "reduction ratio must be >= 1"),
    (dict(arch="mobilenet_v2", attention_type="se", attention_param=32), "leaves no hidden unit for 16 channels"),
    (dict(arch="resnet18", attention_type="eca", attention_param=4), "odd integer"),
    (dict(arch="resnet18", num_classes=0), "num_classes must be a positive integer"),
])
def test_bad_input_raises_value_error_naming_the_choices(kwargs, pattern):
    with pytest.raises(ValueError) as error:
        create_net(**kwargs)
    assert pattern in str(error.value)


def test_parameter_for_a_parameterless_attention_is_ignored_with_a_warning():
    with pytest.warns(UserWarning, match="srm.*ignored"):
        model = create_net("resnet18", "srm", 3)
    assert len(model.state_dict()) == len(create_net("resnet18", "srm").state_dict())


def test_create_attn():
    assert create_attn("none", 64) is None
    assert isinstance(create_attn("simam", 64, 0.2), SimAM) and create_attn("simam", 64, 0.2).e_lambda == 0.2
    se = create_attn("se", 64, 8)
    assert se.fc[0].weight.shape == (8, 64)


def test_a_new_attention_is_one_module_plus_one_registry_line(monkeypatch):
    class HalfGate(nn.Module):
        def __init__(self, channels, scale=0.5):
            super().__init__()
            self.scale = scale

        def forward(self, x):
            return x * self.scale

    monkeypatch.setitem(ATTENTIONS._entries, "half", AttentionSpec(HalfGate, AFTER_BRANCH_BN, "scale", 0.5))
    model = create_net("resnet50", "half", 0.25)
    gates = [m for m in model.modules() if isinstance(m, HalfGate)]
    assert len(gates) == 16 and all(g.scale == 0.25 for g in gates)
    assert model.layer3[5].bn3[1] is gates[12]


def test_attention_modules_get_the_backbones_init():
    """Inserted modules are initialised as the release's backbone init loop would: ResNet's Kaiming-normal
    fan-out for CBAM's 7x7 conv (std sqrt(2/49), vs. PyTorch's default ~0.058), MobileNetV2's N(0, 0.01)
    for SE's linear layers (vs. PyTorch's default uniform bound 1/sqrt(fan_in))."""
    resnet = create_net("resnet50", "cbam")
    convs = torch.cat([m.SpatialGate.spatial.conv.weight.flatten() for m in resnet.modules()
                       if isinstance(m, networks.attentions.CBAM)])
    assert abs(convs.std().item() - (2 / 49) ** 0.5) < 0.02
    mobilenet = create_net("mobilenet_v2", "se")
    linears = torch.cat([m.fc[0].weight.flatten() for m in mobilenet.modules()
                         if isinstance(m, networks.attentions.SEModule)])
    assert abs(linears.std().item() - 0.01) < 0.001
