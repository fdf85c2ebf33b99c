"""create_net computes the release's function for the release's weights (eval and train mode)."""

import copy

import pytest
import torch

import release_reference
from helpers import randomize_bn_statistics
from networks import create_net

CASES = [(arch, att) for arch in ("resnet18", "resnet50", "resnext50_32x4d", "mobilenet_v2")
         for att in ("none", "se", "cbam", "simam")]


def reference_forward(arch, sd, x, attention, training):
    fn = release_reference.mobilenet_v2 if arch == "mobilenet_v2" else release_reference.resnet
    return fn(sd, x, attention=attention, lam=0.1, training=training)


@pytest.mark.parametrize("arch,attention", CASES)
def test_forward_matches_release_eval_and_train(arch, attention):
    model = randomize_bn_statistics(create_net(arch, attention, num_classes=10))
    x = torch.randn(2, 3, 64, 64)
    sd = copy.deepcopy(model.state_dict())

    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_forward(arch, sd, x, attention, False), rtol=1e-4, atol=1e-5)

    model.train()
    with torch.no_grad():
        out = model(x)
        expected = reference_forward(arch, sd, x, attention, True)
    # training mode normalises with the statistics of a batch of 2, which amplifies rounding through the network:
    # create_net's fused SimAM + BatchNorm step rounds differently from SimAM then BN (each pair is checked
    # within 1e-5 in tests/test_simam_bn.py), which moves a logit near 0 by up to ~3e-5
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    # the running statistics moved the same way (CBAM's spatial BN uses momentum 0.01)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, sd[key], rtol=1e-4, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}")


def test_reference_is_sensitive_to_the_attention():
    """Sanity check of the comparison itself: the same weights without SimAM give other logits."""
    model = randomize_bn_statistics(create_net("resnet18", "simam", num_classes=10)).eval()
    sd = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        with_simam = release_reference.resnet(sd, x, "simam")
        renamed = {k.replace("conv2.0.", "conv2."): v for k, v in sd.items()}
        without = release_reference.resnet(renamed, x, "none")
    assert not torch.allclose(with_simam, without, atol=1e-3)
