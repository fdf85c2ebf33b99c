"""Where attention modules go: the one table that fixes placement, and so the checkpoint key names.

An attention module *follows* one submodule of a block, named by a dotted path (negative integers
index from the end of a Sequential). If that submodule sits in a Sequential, the attention is
inserted right after it; otherwise the submodule is replaced by ``Sequential(submodule, attention)``.
This reproduces the official release's layout, e.g. ``layer1.0.conv2.0.weight`` with SimAM,
``layer1.0.bn3.1.fc.0.weight`` with SE, and ``features.2.conv.1.2.weight`` (the BN after SimAM in a
MobileNetV2 depthwise ConvBNReLU).
"""

from __future__ import annotations

import re
from typing import Callable

from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock, Bottleneck

# 3-D attention (SimAM): right after the block's 3x3 (or depthwise 3x3) convolution.
AFTER_3X3_CONV = "after_3x3_conv"
# Channel attention (SE, CBAM, ECA, SRM): after the last BN of the residual branch.
AFTER_BRANCH_BN = "after_branch_bn"

ATTENTION_SITES: dict[type[nn.Module], dict[str, str]] = {
    BasicBlock: {AFTER_3X3_CONV: "conv2", AFTER_BRANCH_BN: "bn2"},
    Bottleneck: {AFTER_3X3_CONV: "conv2", AFTER_BRANCH_BN: "bn3"},
    # conv = [pointwise ConvBNReLU (if expanding)], depthwise ConvBNReLU, pointwise-linear conv, BN
    InvertedResidual: {AFTER_3X3_CONV: "conv.-3.0", AFTER_BRANCH_BN: "conv.-1"},
}


# A class named like a block: one the table does not list would silently get no attention, so it is an error.
_BLOCK_NAME = re.compile(r"(Block|Bottleneck|Residual)$")


def _unlisted_block(module: nn.Module) -> bool:
    """Whether ``module`` looks like a block (a subclass of a listed one, or named like one) but is not listed."""
    kind = type(module)
    return kind not in ATTENTION_SITES and (issubclass(kind, tuple(ATTENTION_SITES))
                                            or bool(_BLOCK_NAME.search(kind.__name__)))


def _child(module: nn.Module, name: str) -> nn.Module:
    return module[int(name)] if isinstance(module, nn.Sequential) else getattr(module, name)


def _out_channels(module: nn.Module) -> int:
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return module.num_features
    raise TypeError(f"cannot infer the channel count of {type(module).__name__}")


def insert_after(block: nn.Module, path: str, attention: nn.Module) -> None:
    """Put ``attention`` right after the submodule of ``block`` at the dotted ``path``."""
    *parent_names, last = path.split(".")
    parent = block
    for name in parent_names:
        parent = _child(parent, name)
    if isinstance(parent, nn.Sequential):
        index = int(last) % len(parent)
        parent.insert(index + 1, attention)
    else:
        setattr(parent, last, nn.Sequential(getattr(parent, last), attention))


def attach_attention(model: nn.Module, site: str, make_attention: Callable[[int], nn.Module]) -> list[nn.Module]:
    """Insert ``make_attention(channels)`` at ``site`` of every known block of ``model``.

    Returns the inserted modules (so the caller can initialise them like the backbone).

    Raises:
        ValueError: ``model`` holds a block class the table does not list, or no listed block at all: a network
            without attention in some blocks is never built silently.
    """
    where = "networks/placement.py (ATTENTION_SITES)"
    unlisted = [(name, module) for name, module in model.named_modules() if _unlisted_block(module)]
    if unlisted:
        name, module = unlisted[0]
        raise ValueError(f"block {type(module).__name__} ({name}) has no attention sites: add its class to {where}")
    blocks = [module for module in model.modules() if type(module) in ATTENTION_SITES]
    if not blocks:
        raise ValueError(f"{type(model).__name__} holds no block listed in {where}: add its block class there")
    inserted = []
    for block in blocks:
        sites = ATTENTION_SITES[type(block)]
        path = sites[site]
        followed = block
        for name in path.split("."):
            followed = _child(followed, name)
        attention = make_attention(_out_channels(followed))
        insert_after(block, path, attention)
        inserted.append(attention)
    return inserted
