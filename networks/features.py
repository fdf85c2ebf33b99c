"""Multi-scale features of the classification networks, for detection and segmentation.

``create_net(arch, ..., features_only=True, out_indices=(1, 2, 3, 4))`` gives a ``FeatureNet``: the network
without its pooling and classifier, returning the feature maps of the requested levels as a list (level 0-4 =
stride 2, 4, 8, 16, 32; levels 1-4 are C2-C5). Its parameter names are the classification network's, so
``load_backbone`` loads an ImageNet checkpoint into it strictly, leaving the classifier out.
``fpn_backbone`` wraps it in torchvision's ``BackboneWithFPN`` for torchvision's detectors.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d

if TYPE_CHECKING:
    from .archs import ArchSpec


class FeatureInfo:
    """Channels, reduction (stride) and module of each output, as timm's ``feature_info``."""

    def __init__(self, entries: list[dict]) -> None:
        self.info = entries  # one dict per output: index, num_chs, reduction, module

    def channels(self) -> list[int]:
        return [entry["num_chs"] for entry in self.info]

    def reduction(self) -> list[int]:
        return [entry["reduction"] for entry in self.info]

    def module_name(self) -> list[str]:
        return [entry["module"] for entry in self.info]

    def __getitem__(self, i: int) -> dict:
        return self.info[i]

    def __iter__(self) -> Iterator[dict]:
        return iter(self.info)

    def __len__(self) -> int:
        return len(self.info)

    def __repr__(self) -> str:
        return f"FeatureInfo({self.info})"


class FeatureNet(nn.Module):
    """A classification network without pooling and classifier; ``forward(x)`` returns the outputs of the
    feature levels ``out_indices`` as a list. Every stage is kept (so that checkpoints load strictly), and the
    forward stops after the last requested level."""

    def __init__(self, model: nn.Module, spec: ArchSpec, out_indices: Sequence[int] = (1, 2, 3, 4)) -> None:
        super().__init__()
        nodes = spec.feature_nodes
        out_indices = tuple(out_indices)
        if not out_indices or list(out_indices) != sorted(set(out_indices)) or not all(
                isinstance(i, int) and 0 <= i < len(nodes) for i in out_indices):
            raise ValueError(f"out_indices must be increasing feature levels in 0-{len(nodes) - 1}, got {out_indices}")
        # Keep the top-level modules up to the one holding the last level (ResNet: conv1 ... layer4;
        # MobileNetV2: features); pooling and the classifier go. The names, and so the keys, stay.
        last_top = nodes[-1].split(".")[0]
        for name, child in model.named_children():
            self.add_module(name, child)
            if name == last_top:
                break
        # The modules run in order: the children of the levels' parent (ResNet: the root, MobileNetV2: features).
        parent, _, _ = nodes[0].rpartition(".")
        steps = [f"{parent}.{name}" if parent else name for name, _ in self.get_submodule(parent).named_children()]
        outputs = [nodes[i] for i in out_indices]
        self._steps = steps[:steps.index(outputs[-1]) + 1]
        self._outputs = frozenset(outputs)
        self.feature_info = FeatureInfo([
            {"index": i, "num_chs": spec.feature_channels[i], "reduction": spec.feature_reductions[i],
             "module": nodes[i]}
            for i in out_indices])

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for name in self._steps:
            x = self.get_submodule(name)(x)
            if name in self._outputs:
                features.append(x)
        return features


def _classifier_prefixes() -> tuple[str, ...]:
    from .archs import ARCHS

    return tuple(sorted({ARCHS.get(arch).classifier + "." for arch in ARCHS}))


def backbone_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A classification state dict without its classifier (``fc.*``, ``classifier.0.*``) and ``module.`` prefix."""
    from .weights import strip_prefix

    prefixes = _classifier_prefixes()
    return {k: v for k, v in strip_prefix(state_dict).items() if not k.startswith(prefixes)}


def load_backbone(model: nn.Module, weights: str | os.PathLike | Mapping[str, Tensor]) -> nn.Module:
    """Load a classification checkpoint (a file: ours, also ``.safetensors``, the release's or a bare state dict, read
    with ``weights_only=True`` or safetensors; or a state dict) into a backbone without classifier, such as a
    ``FeatureNet``: the classifier's weights are dropped and every other key must match (``strict=True``). Returns
    ``model``.

    Raises:
        ValueError: an unreadable file, or weights that do not fit (one line naming the first keys concerned).
    """
    from .weights import read_state_dict

    state_dict = read_state_dict(weights) if isinstance(weights, (str, os.PathLike)) else weights
    try:
        model.load_state_dict(backbone_state_dict(state_dict), strict=True)
    except RuntimeError as error:
        message = " ".join(str(error).split())
        raise ValueError(message if len(message) <= 400 else message[:400] + " ...") from None
    return model


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` in ``module`` by torchvision's ``FrozenBatchNorm2d`` with the same
    affine parameters and running statistics (as torchvision's detection backbones do); in place."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps).to(child.running_mean.device)
            with torch.no_grad():
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(frozen, key).copy_(getattr(child, key))
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


def fpn_backbone(arch: str, attention_type: str = "none", attention_param: float | None = None,
                 weights: str | os.PathLike | Mapping[str, Tensor] | None = None,
                 out_indices: Sequence[int] = (1, 2, 3, 4), out_channels: int = 256,
                 frozen_bn: bool = True) -> BackboneWithFPN:
    """torchvision's ``BackboneWithFPN`` (FPN over the levels ``out_indices``, plus a max-pooled level) on our
    network, for ``torchvision.models.detection.FasterRCNN``, ``RetinaNet`` or ``MaskRCNN``.

    ``weights``: an ImageNet classification checkpoint loaded strictly into the backbone (``load_backbone``).
    ``frozen_bn``: BatchNorm layers become ``FrozenBatchNorm2d`` (the usual choice for small detection batches).
    """
    from .archs import create_net

    net = create_net(arch, attention_type, attention_param, features_only=True, out_indices=out_indices)
    if weights is not None:
        load_backbone(net, weights)
    if frozen_bn:
        freeze_batchnorm(net)
    nodes = net.feature_info.module_name()
    parent, _, _ = nodes[0].rpartition(".")
    return_layers = {node.rpartition(".")[2]: str(i) for i, node in enumerate(nodes)}
    return BackboneWithFPN(net.get_submodule(parent), return_layers, net.feature_info.channels(), out_channels)
