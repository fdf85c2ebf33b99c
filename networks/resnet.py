"""ResNet / ResNeXt for ImageNet. torchvision's layout is the release's, so its builders are used as is."""

from __future__ import annotations

from torch import nn
from torchvision.models import resnet as tv_resnet

resnet18 = tv_resnet.resnet18
resnet34 = tv_resnet.resnet34
resnet50 = tv_resnet.resnet50
resnet101 = tv_resnet.resnet101
resnet152 = tv_resnet.resnet152
resnext50_32x4d = tv_resnet.resnext50_32x4d

# Feature levels 0-4 (strides 2, 4, 8, 16, 32): the stem's activation (before max-pooling), then C2-C5.
FEATURE_NODES = ("relu", "layer1", "layer2", "layer3", "layer4")
BASIC_CHANNELS = (64, 64, 128, 256, 512)  # ResNet-18/34
BOTTLENECK_CHANNELS = (64, 256, 512, 1024, 2048)  # ResNet-50/101/152, ResNeXt


def init_like_resnet(module: nn.Module) -> None:
    """The ResNet init rule (release and torchvision): Kaiming-normal fan-out convs, BN weight 1, bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
