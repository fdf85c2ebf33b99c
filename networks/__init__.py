"""ImageNet backbones (ResNet, ResNeXt, MobileNetV2) with SE, CBAM, ECA, SRM or SimAM attention.

    >>> import networks
    >>> model = networks.create_net("resnet50", "simam", 0.1)
    >>> backbone = networks.create_net("resnet50", "simam", 0.1, features_only=True)  # [C2, C3, C4, C5]
    >>> model = networks.create_net("resnet50", "simam", 0.1, simam_impl="eager")  # SimAM kernels of this model
    >>> networks.set_simam_implementation("reference", model)  # change them on a built model
    >>> loaded = networks.load_network("model_best.pth.tar")  # any weights file: network identified, strict, eval
"""

from .archs import ARCHS, ArchSpec, create_net
from .attentions import (
    ATTENTIONS,
    SIMAM_IMPLEMENTATIONS,
    AttentionSpec,
    SimAM,
    create_attn,
    describe_attention,
    get_simam_implementation,
    set_simam_implementation,
    simam,
    simam_batch_norm,
    simam_fused,
    simam_gate,
)
from .complexity import Complexity, complexity, measure_complexity
from .features import FeatureInfo, FeatureNet, backbone_state_dict, fpn_backbone, freeze_batchnorm, load_backbone
from .identify import NetworkSpec, identify_layouts, identify_network
from .loading import (
    EvalTransform,
    LoadedNetwork,
    check_manifest,
    load_network,
    load_strict,
    sha256_of,
    weights_file,
)
from .simam_bn import fuse_simam_batchnorm, fused_pairs
from .weights import (
    ema_state_dict_of,
    from_torchvision,
    load_checkpoint_file,
    read_safetensors,
    read_state_dict,
    save_safetensors,
    state_dict_of,
    strip_prefix,
)

__all__ = [
    "ARCHS", "ATTENTIONS", "SIMAM_IMPLEMENTATIONS", "ArchSpec", "AttentionSpec", "backbone_state_dict",
    "check_manifest", "complexity", "Complexity", "create_attn", "create_net", "describe_attention",
    "ema_state_dict_of", "EvalTransform", "FeatureInfo", "FeatureNet", "fpn_backbone", "freeze_batchnorm",
    "from_torchvision", "fuse_simam_batchnorm", "fused_pairs", "get_simam_implementation", "identify_layouts",
    "identify_network", "load_backbone", "load_checkpoint_file", "load_network", "load_strict", "LoadedNetwork",
    "measure_complexity", "NetworkSpec", "read_safetensors", "read_state_dict", "save_safetensors", "sha256_of",
    "set_simam_implementation", "SimAM", "simam", "simam_batch_norm", "simam_fused", "simam_gate", "state_dict_of",
    "strip_prefix", "weights_file",
]
