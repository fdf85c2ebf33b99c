"""ImageNet backbones (ResNet, ResNeXt, MobileNetV2) with SE, CBAM, ECA, SRM or SimAM attention.

    >>> import networks
    >>> model = networks.create_net("resnet50", "simam", 0.1)
"""

from .archs import ARCHS, ArchSpec, create_net
from .attentions import (ATTENTIONS, SIMAM_IMPLEMENTATIONS, AttentionSpec, SimAM, create_attn, describe_attention,
                         get_simam_implementation, set_simam_implementation, simam, simam_fused, simam_gate)
from .complexity import Complexity, complexity, measure_complexity
from .weights import from_torchvision, load_checkpoint_file, read_state_dict, state_dict_of, strip_prefix

__all__ = [
    "ARCHS", "ATTENTIONS", "ArchSpec", "AttentionSpec", "Complexity", "SimAM", "complexity", "create_attn",
    "create_net", "describe_attention", "from_torchvision", "get_simam_implementation", "load_checkpoint_file",
    "measure_complexity", "read_state_dict", "set_simam_implementation", "SIMAM_IMPLEMENTATIONS", "simam",
    "simam_fused", "simam_gate", "state_dict_of", "strip_prefix",
]
