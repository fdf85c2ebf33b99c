"""SimAM and the BatchNorm after it as one fused step in training.

In these networks SimAM is always followed by a BatchNorm: ``conv2 = (conv, SimAM)`` then ``bn2`` in ResNet
blocks, ``(conv, SimAM, BN, ReLU6)`` in MobileNetV2's depthwise ConvBNReLU. ``fuse_simam_batchnorm`` gives
those blocks a forward that runs the pair as ``simam_batch_norm`` while the BN is in training mode: the same
output, gradients and running statistics, without keeping SimAM's output for backward. Only the blocks' class
changes: their modules, and so the state dict keys, stay as they are. In eval mode (where SimAM then BN is
already the cheapest form, and what exporters see), while exporting or FX-tracing (torchvision's feature
extraction), with the 'reference' implementation, with hooks on the pair, or with another norm layer (SyncBN,
FrozenBN), the modules run one after the other as before.

Under ``torch.compile`` the ReLU or ReLU6 right after the pair (Bottleneck's, MobileNetV2's) joins the step too:
its gradient mask is then read from its output, which the next convolution keeps anyway, instead of recomputing
BN's output from SimAM's input in backward (on CPUs inductor stores such a recomputed value, with its gate, as
more full-size tensors). Eager runs keep the activation module.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.module import _global_backward_hooks, _global_forward_hooks, _global_forward_pre_hooks
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops.misc import Conv2dNormActivation

from .attentions.simam import SimAM
from .attentions.simam_kernels import exporting, simam_batch_norm

__all__ = ["fuse_simam_batchnorm", "fused_pairs"]


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)


def _fusable(attention: nn.Module, norm: nn.Module) -> bool:
    """Whether ``attention`` then ``norm`` can run as one fused training step now (not while FX traces the model:
    feature extractors see the same SimAM node in training and eval graphs)."""
    return (type(norm) is nn.BatchNorm2d and norm.training and norm.affine and isinstance(attention, SimAM)
            and attention.implementation != "reference" and not _hooked(attention) and not _hooked(norm)
            and not (_global_forward_hooks or _global_forward_pre_hooks or _global_backward_hooks)
            and not torch.fx._symbolic_trace.is_fx_symbolic_tracing() and not exporting())


def _momentum(norm: nn.BatchNorm2d) -> float:
    """The running-average factor of one training forward of ``norm`` (counting the batch, as BatchNorm does)."""
    factor = 0.0 if norm.momentum is None else norm.momentum
    if norm.track_running_stats and norm.num_batches_tracked is not None:
        norm.num_batches_tracked.add_(1)
        factor = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
    return factor


def _bounds(activation: nn.Module | None) -> tuple[float, float | None] | None:
    """The clamp bounds of a ReLU or ReLU6 (torch's modules, without hooks) that joins the fused step: only while
    torch.compile traces the model (see the module's docstring)."""
    if activation is None or _hooked(activation) or not torch.compiler.is_compiling():
        return None
    if type(activation) is nn.ReLU:
        return 0.0, None
    if type(activation) in (nn.ReLU6, nn.Hardtanh):
        return float(activation.min_val), float(activation.max_val)
    return None


def simam_then_batchnorm(attention: SimAM, norm: nn.BatchNorm2d, x: Tensor,
                         bounds: tuple[float, float | None] | None = None) -> Tensor:
    """``norm(attention(x))`` for a training-mode BatchNorm2d, as one fused step (with ``bounds``, and the ReLU or
    ReLU6 after it: see ``simam_batch_norm``)."""
    return simam_batch_norm(x, attention.e_lambda, attention.implementation, norm.weight, norm.bias,
                            norm.running_mean, norm.running_var, _momentum(norm), norm.eps, bounds)


def _conv_simam_bn(conv: nn.Sequential, norm: nn.Module, x: Tensor, activation: nn.Module | None = None) -> Tensor:
    """``activation(norm(conv(x)))`` (or ``norm(conv(x))``) where ``conv`` is ``Sequential(conv, SimAM)``."""
    if _hooked(conv) or not _fusable(conv[1], norm):
        out = norm(conv(x))
        return out if activation is None else activation(out)
    bounds = _bounds(activation)
    out = simam_then_batchnorm(conv[1], norm, conv[0](x), bounds)
    return out if activation is None or bounds is not None else activation(out)


def _run_fusing(modules: nn.Sequential, x: Tensor) -> Tensor:
    """A Sequential's forward that runs each (SimAM, BatchNorm2d) pair in it, and the ReLU or ReLU6 right after
    it, as one step when it can."""
    layers = list(modules)
    i = 0
    while i < len(layers):
        if i + 1 < len(layers) and _fusable(layers[i], layers[i + 1]):
            bounds = _bounds(layers[i + 2]) if i + 2 < len(layers) else None
            x = simam_then_batchnorm(layers[i], layers[i + 1], x, bounds)
            i += 2 if bounds is None else 3
        else:
            x = layers[i](x)
            i += 1
    return x


def _conv_is_simam(conv: nn.Module) -> bool:
    return isinstance(conv, nn.Sequential) and len(conv) == 2 and isinstance(conv[1], SimAM)


def _has_pair(modules: nn.Sequential) -> bool:
    layers = list(modules)
    return any(isinstance(a, SimAM) and isinstance(b, nn.BatchNorm2d) for a, b in zip(layers, layers[1:]))


class SimAMBNBasicBlock(BasicBlock):
    """torchvision's BasicBlock whose ``conv2 = (conv, SimAM)`` and ``bn2`` run as one fused step in training."""

    unfused_class = BasicBlock

    @staticmethod
    def matches(block: nn.Module) -> bool:
        return _conv_is_simam(block.conv2) and isinstance(block.bn2, nn.BatchNorm2d)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = _conv_simam_bn(self.conv2, self.bn2, out)
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class SimAMBNBottleneck(Bottleneck):
    """torchvision's Bottleneck whose ``conv2 = (conv, SimAM)`` and ``bn2`` run as one fused step in training."""

    unfused_class = Bottleneck

    @staticmethod
    def matches(block: nn.Module) -> bool:
        return _conv_is_simam(block.conv2) and isinstance(block.bn2, nn.BatchNorm2d)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = _conv_simam_bn(self.conv2, self.bn2, out, self.relu)
        out = self.bn3(self.conv3(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class SimAMBNConv2dNormActivation(Conv2dNormActivation):
    """torchvision's ConvBNActivation with a SimAM before its BN (MobileNetV2: conv, SimAM, BN, ReLU6): the pair
    runs as one fused step in training."""

    unfused_class = Conv2dNormActivation
    matches = staticmethod(_has_pair)

    def forward(self, x: Tensor) -> Tensor:
        return _run_fusing(self, x)


class SimAMBNSequential(nn.Sequential):
    """A Sequential whose (SimAM, BatchNorm2d) pairs run as one fused step in training."""

    unfused_class = nn.Sequential
    matches = staticmethod(_has_pair)

    def forward(self, x: Tensor) -> Tensor:
        return _run_fusing(self, x)


_FUSED = {cls.unfused_class: cls for cls in (SimAMBNBasicBlock, SimAMBNBottleneck, SimAMBNConv2dNormActivation,
                                              SimAMBNSequential)}
_UNFUSED = {cls: base for base, cls in _FUSED.items()}


def fuse_simam_batchnorm(model: nn.Module, enabled: bool = True) -> int:
    """Let every SimAM that is followed by a BatchNorm2d in ``model`` run with it as one fused training step
    (``enabled=False``: undo). Only the class of the blocks holding the pairs changes (torchvision's BasicBlock,
    Bottleneck, Conv2dNormActivation, or a plain Sequential): parameters, buffers and keys stay. ``create_net``
    does this for its networks. Returns the number of blocks changed."""
    changed = 0
    for module in model.modules():
        target = _FUSED.get(type(module)) if enabled else _UNFUSED.get(type(module))
        if target is not None and (not enabled or target.matches(module)):
            module.__class__ = target
            changed += 1
    return changed


def fused_pairs(model: nn.Module) -> int:
    """The number of (SimAM, BatchNorm2d) pairs of ``model`` that run as one fused step in training mode (pairs in
    fused blocks, with an affine BatchNorm2d and a SimAM whose implementation is not 'reference')."""
    def runs_fused(attention: nn.Module, norm: nn.Module) -> bool:
        return (isinstance(attention, SimAM) and attention.implementation != "reference"
                and type(norm) is nn.BatchNorm2d and norm.affine)

    count = 0
    for module in model.modules():
        if isinstance(module, (SimAMBNBasicBlock, SimAMBNBottleneck)):
            count += runs_fused(module.conv2[1], module.bn2)
        elif isinstance(module, (SimAMBNConv2dNormActivation, SimAMBNSequential)):
            layers = list(module)
            count += sum(runs_fused(a, b) for a, b in zip(layers, layers[1:]))
    return count
