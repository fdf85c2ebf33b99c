"""Attention modules and their registry: the one place that lists which attentions exist.

Adding an attention: write its module file, then add one ``ATTENTIONS.register`` line below saying
where it goes (a site from ``networks.placement``), which constructor keyword ``--attention_param``
sets, and its default.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..placement import AFTER_3X3_CONV, AFTER_BRANCH_BN
from ..registry import Registry
from .cbam import CBAM
from .eca import ECAModule
from .se import SEModule
from .simam import IMPLEMENTATIONS as SIMAM_IMPLEMENTATIONS
from .simam import SimAM, get_simam_implementation, set_simam_implementation, simam, simam_fused, simam_gate
from .simam_kernels import simam_batch_norm
from .srm import SRMModule


@dataclass(frozen=True)
class AttentionSpec:
    """How to build one attention type and where it goes in a block."""

    module: type[nn.Module] | None  # None: no attention
    site: str | None
    param_name: str | None = None  # constructor keyword that attention_param sets (None: takes none)
    default_param: float | None = None
    param_doc: str = "takes no parameter"

    def param_or_default(self, attention_param: float | None) -> float | None:
        """The parameter a module is built with: ``attention_param``, else the default (None for attentions
        that take none)."""
        if self.param_name is None:
            return None
        return self.default_param if attention_param is None else attention_param


ATTENTIONS: Registry[AttentionSpec] = Registry("attention type")
ATTENTIONS.register("none", AttentionSpec(None, None))
ATTENTIONS.register("se", AttentionSpec(SEModule, AFTER_BRANCH_BN, "reduction", 16, "reduction ratio r (>= 1)"))
ATTENTIONS.register("cbam", AttentionSpec(CBAM, AFTER_BRANCH_BN, "reduction", 16, "reduction ratio r (>= 1)"))
ATTENTIONS.register("eca", AttentionSpec(ECAModule, AFTER_BRANCH_BN, "kernel_size", None,
                                         "odd kernel size k (default: adaptive)"))
ATTENTIONS.register("srm", AttentionSpec(SRMModule, AFTER_BRANCH_BN))
ATTENTIONS.register("simam", AttentionSpec(SimAM, AFTER_3X3_CONV, "e_lambda", 0.1, "lambda (> 0)"))


def attention_factory(attention_type: str, attention_param: float | None = None
                      ) -> tuple[str | None, Callable[[int], nn.Module] | None]:
    """Resolve a name and parameter to ``(site, make(channels) -> module)``; ``(None, None)`` for 'none'.

    Parameter values are checked by the module constructors (ValueError naming the valid range).
    """
    spec = ATTENTIONS.get(attention_type)
    if spec.param_name is None:
        if attention_param is not None:
            warnings.warn(f"attention type {attention_type!r} {spec.param_doc}; "
                          f"attention_param={attention_param} is ignored")
        kwargs = {}
    else:
        kwargs = {spec.param_name: spec.param_or_default(attention_param)}
    if spec.module is None:
        return None, None

    def make(channels: int) -> nn.Module:
        return spec.module(channels, **kwargs)

    return spec.site, make


def describe_attention(attention_type: str, attention_param: float | None = None) -> str:
    """``'simam (e_lambda=0.1)'``; just the name for attentions without a parameter (or no value)."""
    spec = ATTENTIONS.get(attention_type)
    if spec.param_name is None or attention_param is None:
        return attention_type
    return f"{attention_type} ({spec.param_name}={attention_param:g})"


def create_attn(attention_type: str, channels: int, attention_param: float | None = None) -> nn.Module | None:
    """Build one attention module by name (None for 'none'), e.g. ``create_attn('simam', 64, 0.1)``."""
    _, make = attention_factory(attention_type, attention_param)
    return None if make is None else make(channels)


__all__ = ["ATTENTIONS", "AttentionSpec", "CBAM", "ECAModule", "SEModule", "SRMModule", "SimAM",
           "SIMAM_IMPLEMENTATIONS", "attention_factory", "create_attn", "describe_attention",
           "get_simam_implementation",
           "set_simam_implementation", "simam", "simam_batch_norm", "simam_fused", "simam_gate"]
