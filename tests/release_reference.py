"""An independent, functional statement of the official release's ImageNet networks.

It reads a state dict laid out as the release's checkpoints (key names from reference.md, "Where
attention goes") and computes the logits with torch.nn.functional only, using the papers' formulas
for each attention module. Nothing here imports ``networks``: the tests compare ``create_net``'s
modules against it for the same weights. BN running statistics in ``sd`` are updated in place in
training mode, as the modules would update theirs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

CHANNEL_ATTENTIONS = ("se", "cbam")
MOBILENET_V2_SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                        (6, 320, 1, 1)]


def conv(sd: dict, key: str, x: Tensor, stride: int = 1) -> Tensor:
    w = sd[key]
    return F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2, groups=x.shape[1] // w.shape[1])


def bn(sd: dict, prefix: str, x: Tensor, training: bool, momentum: float = 0.1) -> Tensor:
    if training:
        sd[prefix + "num_batches_tracked"] += 1
    return F.batch_norm(x, sd[prefix + "running_mean"], sd[prefix + "running_var"], sd[prefix + "weight"],
                        sd[prefix + "bias"], training, momentum, 1e-5)


def simam(x: Tensor, lam: float) -> Tensor:
    """The paper's README listing: d = (x - mean)^2, v = sum(d)/(HW - 1), x * sigmoid(d / (4 (v + lam)) + 0.5)."""
    n = x.shape[2] * x.shape[3] - 1
    d = (x - x.mean(dim=[2, 3], keepdim=True)).pow(2)
    v = d.sum(dim=[2, 3], keepdim=True) / n
    return x * torch.sigmoid(d / (4 * (v + lam)) + 0.5)


def se(sd: dict, p: str, x: Tensor) -> Tensor:
    """Squeeze (global average) -> FC (no bias) -> ReLU -> FC (no bias) -> sigmoid -> channel scaling."""
    s = x.mean(dim=[2, 3])
    s = torch.sigmoid(F.linear(F.relu(F.linear(s, sd[p + "fc.0.weight"])), sd[p + "fc.2.weight"]))
    return x * s[:, :, None, None]


def cbam(sd: dict, p: str, x: Tensor, training: bool) -> Tensor:
    """Channel gate (shared MLP on avg- and max-pooled vectors), then spatial gate (7x7 conv + BN on [max, mean])."""
    def mlp(v: Tensor) -> Tensor:
        h = F.relu(F.linear(v, sd[p + "ChannelGate.mlp.1.weight"], sd[p + "ChannelGate.mlp.1.bias"]))
        return F.linear(h, sd[p + "ChannelGate.mlp.3.weight"], sd[p + "ChannelGate.mlp.3.bias"])

    x = x * torch.sigmoid(mlp(x.mean(dim=[2, 3])) + mlp(x.amax(dim=[2, 3])))[:, :, None, None]
    pooled = torch.cat([x.max(dim=1, keepdim=True)[0], x.mean(dim=1, keepdim=True)], dim=1)
    s = conv(sd, p + "SpatialGate.spatial.conv.weight", pooled)
    s = bn(sd, p + "SpatialGate.spatial.bn.", s, training, momentum=0.01)
    return x * torch.sigmoid(s)


def channel_attention(kind: str, sd: dict, p: str, x: Tensor, training: bool) -> Tensor:
    return se(sd, p, x) if kind == "se" else cbam(sd, p, x, training)


def resnet_block(sd: dict, p: str, x: Tensor, stride: int, attention: str, lam: float, training: bool) -> Tensor:
    """BasicBlock (conv1 3x3 strided, conv2 3x3) or Bottleneck (conv1 1x1, conv2 3x3 strided, conv3 1x1)."""
    bottleneck = p + "conv3.weight" in sd
    out = F.relu(bn(sd, p + "bn1.", conv(sd, p + "conv1.weight", x, 1 if bottleneck else stride), training))
    conv2_stride = stride if bottleneck else 1
    if attention == "simam":  # conv2 = Sequential(conv, simam)
        out = simam(conv(sd, p + "conv2.0.weight", out, conv2_stride), lam)
    else:
        out = conv(sd, p + "conv2.weight", out, conv2_stride)
    if bottleneck:
        out = conv(sd, p + "conv3.weight", F.relu(bn(sd, p + "bn2.", out, training)))
    last_bn = p + ("bn3" if bottleneck else "bn2")
    if attention in CHANNEL_ATTENTIONS:  # last BN = Sequential(bn, attention)
        out = channel_attention(attention, sd, last_bn + ".1.", bn(sd, last_bn + ".0.", out, training), training)
    else:
        out = bn(sd, last_bn + ".", out, training)
    identity = x
    if p + "downsample.0.weight" in sd:
        identity = bn(sd, p + "downsample.1.", conv(sd, p + "downsample.0.weight", x, stride), training)
    return F.relu(out + identity)


def resnet(sd: dict, x: Tensor, attention: str = "none", lam: float = 0.1, training: bool = False) -> Tensor:
    x = F.relu(bn(sd, "bn1.", conv(sd, "conv1.weight", x, stride=2), training))
    x = F.max_pool2d(x, 3, 2, 1)
    for layer in range(1, 5):
        block = 0
        while f"layer{layer}.{block}.conv1.weight" in sd:
            stride = 2 if layer > 1 and block == 0 else 1
            x = resnet_block(sd, f"layer{layer}.{block}.", x, stride, attention, lam, training)
            block += 1
    return F.linear(x.mean(dim=[2, 3]), sd["fc.weight"], sd["fc.bias"])


def mobilenet_v2(sd: dict, x: Tensor, attention: str = "none", lam: float = 0.1, training: bool = False) -> Tensor:
    def conv_bn_relu6(p: str, x: Tensor, stride: int = 1, with_simam: bool = False) -> Tensor:
        x = conv(sd, p + "0.weight", x, stride)
        if with_simam:  # (conv, simam, bn, relu6)
            return F.relu6(bn(sd, p + "2.", simam(x, lam), training))
        return F.relu6(bn(sd, p + "1.", x, training))

    x = conv_bn_relu6("features.0.", x, stride=2)
    index, channels = 1, 32
    for t, c, n, s in MOBILENET_V2_SETTING:
        for i in range(n):
            stride = s if i == 0 else 1
            p = f"features.{index}.conv."
            out, k = x, 0
            if t != 1:
                out = conv_bn_relu6(p + "0.", out)
                k = 1
            out = conv_bn_relu6(f"{p}{k}.", out, stride, with_simam=attention == "simam")
            out = bn(sd, f"{p}{k + 2}.", conv(sd, f"{p}{k + 1}.weight", out), training)
            if attention in CHANNEL_ATTENTIONS:  # appended after the projection BN
                out = channel_attention(attention, sd, f"{p}{k + 3}.", out, training)
            x = x + out if stride == 1 and channels == c else out
            index, channels = index + 1, c
    x = conv_bn_relu6(f"features.{index}.", x)
    return F.linear(x.mean(dim=[2, 3]), sd["classifier.0.weight"], sd["classifier.0.bias"])
