"""The backbone registry and ``create_net``: the one place that lists which architectures exist (and where
their feature levels and classifier are)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from torch import nn

from . import mobilenetv2, resnet
from .attentions import attention_factory, set_simam_implementation
from .attentions.simam_kernels import check_implementation as check_simam_implementation
from .features import FeatureNet
from .placement import attach_attention
from .registry import Registry
from .simam_bn import fuse_simam_batchnorm

REDUCTIONS = (2, 4, 8, 16, 32)  # the stride of feature levels 0-4


@dataclass(frozen=True)
class ArchSpec:
    """How to build one backbone (without attention), initialise modules added to it, and take it apart."""

    build: Callable[..., nn.Module]  # build(num_classes=...) -> model
    init: Callable[[nn.Module], None]  # the backbone's init rule, applied to inserted attention modules
    torchvision_renames: tuple[tuple[str, str], ...] = ()  # key prefixes: torchvision's -> ours
    feature_nodes: tuple[str, ...] = ()  # the modules whose outputs are feature levels 0-4 (strides REDUCTIONS)
    feature_channels: tuple[int, ...] = ()  # their channel counts
    classifier: str = "fc"  # the classifier's linear layer (keys <classifier>.weight/.bias; features_only drops it)
    gradcam_layer: str = "layer4"  # the last convolutional stage, whose output Grad-CAM explains

    @property
    def feature_reductions(self) -> tuple[int, ...]:
        return REDUCTIONS[:len(self.feature_nodes)]


def _resnet(build: Callable[..., nn.Module], channels: tuple[int, ...]) -> ArchSpec:
    return ArchSpec(build, resnet.init_like_resnet, feature_nodes=resnet.FEATURE_NODES, feature_channels=channels)


ARCHS: Registry[ArchSpec] = Registry("arch")
ARCHS.register("resnet18", _resnet(resnet.resnet18, resnet.BASIC_CHANNELS))
ARCHS.register("resnet34", _resnet(resnet.resnet34, resnet.BASIC_CHANNELS))
ARCHS.register("resnet50", _resnet(resnet.resnet50, resnet.BOTTLENECK_CHANNELS))
ARCHS.register("resnet101", _resnet(resnet.resnet101, resnet.BOTTLENECK_CHANNELS))
ARCHS.register("resnet152", _resnet(resnet.resnet152, resnet.BOTTLENECK_CHANNELS))
ARCHS.register("resnext50_32x4d", _resnet(resnet.resnext50_32x4d, resnet.BOTTLENECK_CHANNELS))
ARCHS.register("mobilenet_v2", ArchSpec(mobilenetv2.mobilenet_v2, mobilenetv2.init_like_mobilenet,
                                        mobilenetv2.TORCHVISION_RENAMES, feature_nodes=mobilenetv2.FEATURE_NODES,
                                        feature_channels=mobilenetv2.FEATURE_CHANNELS, classifier="classifier.0",
                                        gradcam_layer="features.18"))


def create_net(arch: str, attention_type: str = "none", attention_param: float | None = None,
               num_classes: int = 1000, features_only: bool = False,
               out_indices: Sequence[int] = (1, 2, 3, 4), simam_impl: str | None = None,
               fuse_simam_bn: bool = True) -> nn.Module:
    """Build an ImageNet backbone with an attention module in every block, laid out as the release.

    Args:
        arch: one of ``ARCHS.names()`` (resnet18/34/50/101/152, resnext50_32x4d, mobilenet_v2).
        attention_type: none, se, cbam, eca, srm or simam.
        attention_param: reduction ratio for se/cbam (default 16), lambda for simam (default 0.1,
            must be > 0), odd 1-D kernel size for eca (default: ECA's adaptive rule); srm and none take
            none (a value is ignored with a warning).
        num_classes: size of the classifier.
        features_only: return a ``FeatureNet`` instead: the network without pooling and classifier, whose
            forward returns the list of feature maps of ``out_indices``, described by its ``feature_info``.
        out_indices: feature levels for ``features_only``, 0-4 = strides 2, 4, 8, 16, 32 (1-4: C2-C5).
        simam_impl: how its SimAM modules run: 'auto', 'compiled', 'eager' or 'reference' (None: the default,
            ``networks.get_simam_implementation()``); ``networks.set_simam_implementation(name, model)`` changes it.
        fuse_simam_bn: run each SimAM and the BatchNorm after it as one fused step in training
            (``networks.fuse_simam_batchnorm``); same values and keys, less memory. False: the modules one by one.

    Raises:
        ValueError: unknown arch, attention or SimAM implementation (the message lists the valid choices), or a
            bad parameter.
    """
    spec = ARCHS.get(arch)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if simam_impl is not None:
        check_simam_implementation(simam_impl)
    site, make_attention = attention_factory(attention_type, attention_param)
    model = spec.build(num_classes=num_classes)
    if make_attention is not None:
        for module in attach_attention(model, site, make_attention):
            spec.init(module)
        if simam_impl is not None:
            set_simam_implementation(simam_impl, model)
        if fuse_simam_bn:
            fuse_simam_batchnorm(model)
    if features_only:
        return FeatureNet(model, spec, out_indices)
    return model
