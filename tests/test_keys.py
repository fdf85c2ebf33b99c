"""State dict layout: the release's key names and shapes, and loading torchvision's weights."""

import re

import pytest
import torch
import torchvision.models as tvm

from helpers import randomize_bn_statistics
from networks import create_net, from_torchvision

RESNETS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d"]


def shapes(state_dict):
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def channel_attention_keys(prefix, channels, attention, reduction):
    """Parameter keys of an SE or CBAM module at ``prefix`` (reference.md: SE fc.0/fc.2 without bias,
    CBAM ChannelGate.mlp.1/.3 with bias and a 7x7 2->1 SpatialGate conv + BN)."""
    hidden = int(channels // reduction)
    if attention == "se":
        return {prefix + "fc.0.weight": (hidden, channels), prefix + "fc.2.weight": (channels, hidden)}
    keys = {
        prefix + "ChannelGate.mlp.1.weight": (hidden, channels), prefix + "ChannelGate.mlp.1.bias": (hidden,),
        prefix + "ChannelGate.mlp.3.weight": (channels, hidden), prefix + "ChannelGate.mlp.3.bias": (channels,),
        prefix + "SpatialGate.spatial.conv.weight": (1, 2, 7, 7),
    }
    for name in ("weight", "bias", "running_mean", "running_var"):
        keys[prefix + "SpatialGate.spatial.bn." + name] = (1,)
    keys[prefix + "SpatialGate.spatial.bn.num_batches_tracked"] = ()
    return keys


def expected_resnet_layout(arch, attention, reduction=16):
    """torchvision's keys (= the release's without attention), rewritten by reference.md's rules."""
    plain = shapes(getattr(tvm, arch)().state_dict())
    last_bn = "bn3" if any(".conv3." in k for k in plain) else "bn2"
    expected = {}
    for key, shape in plain.items():
        m = re.fullmatch(r"(layer\d\.\d+\.)(\w+)\.(.+)", key)
        if m and attention == "simam" and m[2] == "conv2":
            key = f"{m[1]}conv2.0.{m[3]}"
        elif m and attention in ("se", "cbam") and m[2] == last_bn:
            key = f"{m[1]}{last_bn}.0.{m[3]}"
        expected[key] = shape
    if attention in ("se", "cbam"):
        for key, shape in plain.items():
            m = re.fullmatch(rf"(layer\d\.\d+\.){last_bn}\.weight", key)
            if m:
                expected.update(channel_attention_keys(f"{m[1]}{last_bn}.1.", shape[0], attention, reduction))
    return expected


def expected_mobilenet_layout(attention, reduction=16):
    """torchvision's MobileNetV2 keys with classifier.1 -> classifier.0, SimAM between the depthwise conv
    and its BN (that BN moves from index 1 to 2), channel attention appended after the projection BN."""
    plain = shapes(tvm.mobilenet_v2().state_dict())
    depthwise = {m[1] for k, s in plain.items()
                 if (m := re.fullmatch(r"(features\.\d+\.conv\.\d+\.)0\.weight", k)) and s[1] == 1}
    expected = {}
    for key, shape in plain.items():
        key = key.replace("classifier.1.", "classifier.0.")
        m = re.fullmatch(r"(features\.\d+\.conv\.\d+\.)1\.(.+)", key)
        if attention == "simam" and m and m[1] in depthwise:
            key = f"{m[1]}2.{m[2]}"
        expected[key] = shape
    if attention in ("se", "cbam"):
        for block in sorted({int(m[1]) for k in plain
                             if (m := re.fullmatch(r"features\.(\d+)\.conv\.\d+\.weight", k))}):
            last = max(int(m[1]) for k in plain
                       if (m := re.fullmatch(rf"features\.{block}\.conv\.(\d+)\.weight", k)))
            channels = plain[f"features.{block}.conv.{last}.weight"][0]
            expected.update(channel_attention_keys(f"features.{block}.conv.{last + 1}.", channels, attention,
                                                   reduction))
    return expected


@pytest.mark.parametrize("attention", ["none", "se", "cbam", "simam"])
@pytest.mark.parametrize("arch", RESNETS)
def test_resnet_keys_and_shapes_follow_the_release(arch, attention):
    assert shapes(create_net(arch, attention).state_dict()) == expected_resnet_layout(arch, attention)


@pytest.mark.parametrize("attention", ["none", "se", "cbam", "simam"])
def test_mobilenet_v2_keys_and_shapes_follow_the_release(attention):
    assert shapes(create_net("mobilenet_v2", attention).state_dict()) == expected_mobilenet_layout(attention)


def test_reduction_parameter_sets_the_bottleneck_width():
    assert shapes(create_net("resnet50", "se", 8).state_dict()) == expected_resnet_layout("resnet50", "se", 8)
    keys = shapes(create_net("resnet50", "cbam", 4).state_dict())
    assert keys["layer4.2.bn3.1.ChannelGate.mlp.1.weight"] == (512, 2048)


def test_eca_and_srm_follow_the_channel_attention_rule():
    eca = shapes(create_net("resnet50", "eca").state_dict())
    assert eca["layer1.0.bn3.0.weight"] == (256,) and eca["layer1.0.bn3.1.conv.weight"] == (1, 1, 5)
    assert eca["layer4.0.bn3.1.conv.weight"] == (1, 1, 7)  # adaptive kernel for 2048 channels
    srm = shapes(create_net("resnet18", "srm").state_dict())
    assert srm["layer2.1.bn2.0.weight"] == (128,) and srm["layer2.1.bn2.1.cfc.weight"] == (128, 1, 2)
    assert srm["layer2.1.bn2.1.bn.running_var"] == (128,)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnext50_32x4d"])
def test_torchvision_weights_load_strictly_with_identical_logits(arch):
    reference = randomize_bn_statistics(getattr(tvm, arch)(num_classes=7)).eval()
    model = create_net(arch, "none", num_classes=7).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_torchvision_mobilenet_v2_loads_through_the_key_mapping():
    reference = randomize_bn_statistics(tvm.mobilenet_v2(num_classes=7)).eval()
    model = create_net("mobilenet_v2", "none", num_classes=7).eval()
    with pytest.raises(RuntimeError, match="classifier"):
        model.load_state_dict(reference.state_dict(), strict=True)
    model.load_state_dict(from_torchvision("mobilenet_v2", reference.state_dict()), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
