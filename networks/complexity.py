"""Parameter and FLOP counts with thop, in the paper's counting convention.

The paper's FLOPs column (e.g. SimAM-R50: 4.11 G) counts multiply-adds of convolutions and linear
layers plus 2 per BN output element, with activations and pooling free, on a 1x3x224x224 input.
thop's own defaults count 4 per affine-BN element and the pooling adds, which overshoots slightly
(MobileNetV2: 0.33 G instead of 0.31 G), so BN and pooling get custom thop rules here.
``gflops_all_ops`` adds each attention module's own elementwise work and reductions (its
``count_own_ops``), which neither the paper nor thop counts.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import asdict, dataclass

import torch
from torch import nn

with warnings.catch_warnings():  # thop imports distutils.LooseVersion
    warnings.simplefilter("ignore")
    import thop


@dataclass(frozen=True)
class Complexity:
    params_m: float  # parameters, millions
    gflops: float  # G multiply-adds, paper convention
    gflops_all_ops: float  # gflops + the attention modules' own elementwise operations, G

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _two_ops_per_output(module: nn.Module, inputs, output: torch.Tensor) -> None:
    module.total_ops += 2 * output.numel()


def _free(module: nn.Module, inputs, output) -> None:
    pass


PAPER_RULES = {
    nn.BatchNorm1d: _two_ops_per_output,
    nn.BatchNorm2d: _two_ops_per_output,
    nn.SyncBatchNorm: _two_ops_per_output,
    nn.AdaptiveAvgPool1d: _free,
    nn.AdaptiveAvgPool2d: _free,
    nn.AvgPool2d: _free,
}


def measure_complexity(model: nn.Module, image_size: int = 224) -> Complexity:
    """Count params and FLOPs of ``model`` on one ``3 x image_size x image_size`` image (model untouched)."""
    model = copy.deepcopy(model).cpu().float().eval()
    own_ops = 0

    def count_own(module: nn.Module, inputs, output) -> None:
        nonlocal own_ops
        own_ops += int(module.count_own_ops(inputs[0].shape))

    for module in model.modules():
        if hasattr(module, "count_own_ops"):
            module.register_forward_hook(count_own)
    macs, _ = thop.profile(model, inputs=(torch.randn(1, 3, image_size, image_size),),
                           custom_ops=PAPER_RULES, verbose=False)
    params = sum(p.numel() for p in model.parameters())
    return Complexity(params_m=params / 1e6, gflops=macs / 1e9, gflops_all_ops=(macs + own_ops) / 1e9)


def complexity(arch: str, attention_type: str = "none", attention_param: float | None = None,
               image_size: int = 224, num_classes: int = 1000) -> Complexity:
    """Build ``create_net(arch, attention_type, attention_param, num_classes)`` and measure it."""
    from .archs import create_net

    return measure_complexity(create_net(arch, attention_type, attention_param, num_classes), image_size)
