"""ECA and SRM (not in the release) against direct statements of their papers' formulas."""

import pytest
import torch

from networks.attentions import ECAModule, SRMModule
from networks.attentions.eca import adaptive_kernel_size


@pytest.mark.parametrize("channels,k", [(64, 3), (128, 5), (256, 5), (512, 5), (1024, 5), (2048, 7)])
def test_eca_adaptive_kernel_size(channels, k):
    # ECA-Net: k = |(log2 C + b) / gamma|_odd with gamma = 2, b = 1
    assert adaptive_kernel_size(channels) == k


def test_eca_is_a_channel_neighbourhood_gate():
    eca = ECAModule(8, kernel_size=3)
    x = torch.randn(2, 8, 5, 6)
    w = eca.conv.weight.detach().flatten()
    y = x.mean(dim=[2, 3])
    expected = torch.empty_like(x)
    for c in range(8):  # zero-padded 1-D conv over neighbouring channels c-1, c, c+1
        z = sum(w[j] * y[:, c + j - 1] for j in range(3) if 0 <= c + j - 1 < 8)
        expected[:, c] = x[:, c] * torch.sigmoid(z)[:, None, None]
    torch.testing.assert_close(eca(x), expected)


@pytest.mark.parametrize("training", [True, False])
def test_srm_style_pooling_channel_fc_bn_gate(training):
    srm = SRMModule(6).train(training)
    with torch.no_grad():
        srm.bn.running_mean.uniform_(-0.5, 0.5)
        srm.bn.running_var.uniform_(0.5, 2)
        srm.bn.weight.uniform_(0.5, 1.5)
        srm.bn.bias.uniform_(-0.5, 0.5)
    bn = {k: v.clone() for k, v in srm.bn.state_dict().items()}
    x = torch.randn(4, 6, 5, 5) * 2 + 1
    mean = x.mean(dim=[2, 3])
    std = ((x - mean[:, :, None, None]) ** 2).mean(dim=[2, 3]).add(1e-5).sqrt()
    w = srm.cfc.weight.detach()[:, 0, :]  # (C, 2): one weight for the mean, one for the std
    z = w[:, 0] * mean + w[:, 1] * std
    if training:
        z_hat = (z - z.mean(0)) / (z.var(0, unbiased=False) + 1e-5).sqrt()
    else:
        z_hat = (z - bn["running_mean"]) / (bn["running_var"] + 1e-5).sqrt()
    gate = torch.sigmoid(z_hat * bn["weight"] + bn["bias"])
    torch.testing.assert_close(srm(x), x * gate[:, :, None, None], rtol=1e-5, atol=1e-6)
