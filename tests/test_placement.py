"""networks/placement.py: every block of a network gets its attention, or the build is an error naming the table."""

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

import networks
from networks.archs import ARCHS, ArchSpec
from networks.attentions import SimAM
from networks.placement import AFTER_3X3_CONV, attach_attention


class WiderBasicBlock(BasicBlock):
    """A subclass of a listed block: its sites may differ, so it is not assumed to be listed."""


class TwoConvBlock(nn.Module):
    """A new block class the table does not list."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(torch.relu(self.conv1(x)))


def simam(_channels):
    return SimAM()


@pytest.mark.parametrize("block", [WiderBasicBlock(4, 4), TwoConvBlock()], ids=["subclass", "new-class"])
def test_an_unlisted_block_is_an_error_naming_the_table(block):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), BasicBlock(4, 4), block)
    with pytest.raises(ValueError, match=rf"block {type(block).__name__} \(2\) has no attention sites: "
                                         r"add its class to networks/placement.py"):
        attach_attention(model, AFTER_3X3_CONV, simam)
    assert not any(isinstance(m, SimAM) for m in model.modules()), "nothing was inserted before the error"


def test_a_network_without_any_listed_block_is_an_error():
    with pytest.raises(ValueError, match="Sequential holds no block listed in networks/placement.py"):
        attach_attention(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), AFTER_3X3_CONV, simam)


def test_a_registered_arch_with_a_new_block_fails_to_build_with_attention_but_builds_without():
    def build(num_classes=1000):
        return nn.Sequential(nn.Conv2d(3, 4, 3), TwoConvBlock(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, num_classes))

    ARCHS.register("two_conv_test_net", ArchSpec(build, lambda module: None))
    try:
        with pytest.raises(ValueError, match="TwoConvBlock"):
            networks.create_net("two_conv_test_net", "simam", num_classes=3)
        assert networks.create_net("two_conv_test_net", "none", num_classes=3)(torch.randn(1, 3, 8, 8)).shape == (1, 3)
    finally:
        ARCHS._entries.pop("two_conv_test_net")


@pytest.mark.parametrize("arch", ARCHS.names())
def test_every_shipped_arch_has_one_simam_per_block(arch):
    """Counted independently of the table: torchvision's blocks of the same network, one SimAM each."""
    from torchvision.models.mobilenetv2 import InvertedResidual
    from torchvision.models.resnet import Bottleneck

    plain = networks.create_net(arch, "none", num_classes=10)
    blocks = sum(isinstance(m, (BasicBlock, Bottleneck, InvertedResidual)) for m in plain.modules())
    model = networks.create_net(arch, "simam", num_classes=10)
    assert blocks > 0 and sum(isinstance(m, SimAM) for m in model.modules()) == blocks
