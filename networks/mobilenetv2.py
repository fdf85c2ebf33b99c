"""MobileNetV2 as in the release: torchvision's network with a bare linear classifier (no dropout)."""

from __future__ import annotations

from torch import nn
from torchvision.models import mobilenetv2 as tv_mobilenetv2

# torchvision keeps Dropout at classifier.0, so its linear layer is classifier.1; ours is classifier.0.
TORCHVISION_RENAMES = (("classifier.1.", "classifier.0."),)

# Feature levels 0-4 (strides 2, 4, 8, 16, 32): the last block of each stride, the last one being the final
# 1x1 conv to 1280 channels (as torchvision's detection backbones take it).
FEATURE_NODES = ("features.1", "features.3", "features.6", "features.13", "features.18")
FEATURE_CHANNELS = (16, 24, 32, 96, 1280)


def init_like_mobilenet(module: nn.Module) -> None:
    """The MobileNetV2 init rule: Kaiming-normal fan-out convs, BN 1/0, linear N(0, 0.01), zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def mobilenet_v2(num_classes: int = 1000) -> nn.Module:
    """MobileNetV2 (width 1.0) with ``classifier = Sequential(Linear(1280, num_classes))``."""
    model = tv_mobilenetv2.mobilenet_v2(num_classes=num_classes)
    model.classifier = nn.Sequential(nn.Linear(model.last_channel, num_classes))
    init_like_mobilenet(model.classifier)
    return model
