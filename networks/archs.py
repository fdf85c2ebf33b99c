"""The backbone registry and ``create_net``: the one place that lists which architectures exist."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from . import mobilenetv2, resnet
from .attentions import attention_factory
from .placement import attach_attention
from .registry import Registry


@dataclass(frozen=True)
class ArchSpec:
    """How to build one backbone (without attention) and initialise modules added to it."""

    build: Callable[..., nn.Module]  # build(num_classes=...) -> model
    init: Callable[[nn.Module], None]  # the backbone's init rule, applied to inserted attention modules
    torchvision_renames: tuple[tuple[str, str], ...] = ()  # key prefixes: torchvision's -> ours


ARCHS: Registry[ArchSpec] = Registry("arch")
ARCHS.register("resnet18", ArchSpec(resnet.resnet18, resnet.init_like_resnet))
ARCHS.register("resnet34", ArchSpec(resnet.resnet34, resnet.init_like_resnet))
ARCHS.register("resnet50", ArchSpec(resnet.resnet50, resnet.init_like_resnet))
ARCHS.register("resnet101", ArchSpec(resnet.resnet101, resnet.init_like_resnet))
ARCHS.register("resnet152", ArchSpec(resnet.resnet152, resnet.init_like_resnet))
ARCHS.register("resnext50_32x4d", ArchSpec(resnet.resnext50_32x4d, resnet.init_like_resnet))
ARCHS.register("mobilenet_v2", ArchSpec(mobilenetv2.mobilenet_v2, mobilenetv2.init_like_mobilenet,
                                        mobilenetv2.TORCHVISION_RENAMES))


def create_net(arch: str, attention_type: str = "none", attention_param: float | None = None,
               num_classes: int = 1000) -> nn.Module:
    """Build an ImageNet backbone with an attention module in every block, laid out as the release.

    Args:
        arch: one of ``ARCHS.names()`` (resnet18/34/50/101/152, resnext50_32x4d, mobilenet_v2).
        attention_type: none, se, cbam, eca, srm or simam.
        attention_param: reduction ratio for se/cbam (default 16), lambda for simam (default 0.1,
            must be > 0), odd 1-D kernel size for eca (default: ECA's adaptive rule); srm and none take
            none (a value is ignored with a warning).
        num_classes: size of the classifier.

    Raises:
        ValueError: unknown arch or attention (the message lists the valid choices), or a bad parameter.
    """
    spec = ARCHS.get(arch)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    site, make_attention = attention_factory(attention_type, attention_param)
    model = spec.build(num_classes=num_classes)
    if make_attention is not None:
        for module in attach_attention(model, site, make_attention):
            spec.init(module)
    return model
