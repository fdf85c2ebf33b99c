"""Which network a checkpoint holds: the one policy the training entry point and the scripts share.

From a checkpoint's own record (ours: arch, attention_type, attention_param), the release's ``arch`` field and
the key layout of its weights, ``identify_network`` returns arch, attention and parameter, or raises a
``ValueError`` that lists the candidates when it cannot decide. Values given by the caller always win.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from .archs import ARCHS, create_net
from .attentions import ATTENTIONS
from .weights import state_dict_of

DEFAULT_ARCH = "resnet18"  # without a checkpoint: the release's default


@dataclass(frozen=True)
class NetworkSpec:
    """One network of ``create_net``: arch, attention type and its parameter (the default filled in)."""

    arch: str
    attention_type: str
    attention_param: float | None

    def create(self, num_classes: int = 1000):
        return create_net(self.arch, self.attention_type, self.attention_param, num_classes)


@functools.lru_cache(maxsize=None)
def _layout(arch: str, attention_type: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = create_net(arch, attention_type)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def identify_layouts(state_dict: Mapping[str, torch.Tensor]) -> list[tuple[str, str]]:
    """The (arch, attention) pairs, with default parameters, whose keys and shapes match ``state_dict``
    (the class count aside)."""
    found = {key: tuple(value.shape) for key, value in state_dict.items()}
    matches = []
    for arch in ARCHS:
        classifier = ARCHS.get(arch).classifier + "."
        for attention in ATTENTIONS:
            layout = _layout(arch, attention)
            if layout.keys() == found.keys() and all(
                    layout[k][1:] == found[k][1:] if k.startswith(classifier) else layout[k] == found[k]
                    for k in layout):
                matches.append((arch, attention))
    return matches


def identify_network(checkpoint: Any = None, arch: str | None = None, attention_type: str | None = None,
                     attention_param: float | None = None, source: str = "the checkpoint") -> NetworkSpec:
    """The network of ``checkpoint`` (a loaded file: ours, the release's, a bare state dict; or None).

    Given values win; the rest comes from the checkpoint's record (ours: arch, attention, parameter; the release's:
    ``arch``), and what is still missing from the weights' key layout; without a checkpoint, resnet18 without
    attention. The parameter is the record's when the
    attention is the recorded one, else the attention's default. Raises ``ValueError`` naming the candidates
    when the layout fits several networks or none (``source`` names the file in the message).
    """
    record = checkpoint if isinstance(checkpoint, Mapping) else {}
    arch = arch or record.get("arch")
    if checkpoint is not None and (arch is None or attention_type is None) and "attention_type" not in record:
        arch, attention_type = _from_layout(checkpoint, arch, attention_type, source)
    arch = (arch or DEFAULT_ARCH).lower()
    attention_type = (attention_type or record.get("attention_type") or "none").lower()
    ARCHS.get(arch)
    spec = ATTENTIONS.get(attention_type)
    if attention_param is None and record.get("attention_type") == attention_type:
        attention_param = record.get("attention_param")
    return NetworkSpec(arch, attention_type, spec.param_or_default(attention_param))


def _from_layout(checkpoint: Any, arch: str | None, attention_type: str | None, source: str) -> tuple[str, str]:
    candidates = [(a, t) for a, t in identify_layouts(state_dict_of(checkpoint, source))
                  if arch in (None, a) and (attention_type is None or attention_type.lower() == t)]
    if len(candidates) == 1:
        return candidates[0]
    asked = " ".join(f"{flag} {value}" for flag, value in (("-a", arch), ("--attention_type", attention_type)) if value)
    if candidates:
        fits = " or ".join(f"-a {a} --attention_type {t}" for a, t in candidates)
        raise ValueError(f"cannot tell which network {source} holds: its weights fit {fits}; say which")
    raise ValueError(f"cannot tell which network {source} holds: its weights fit none of the networks here with "
                     f"default attention parameters{' and ' + asked if asked else ''}; give -a, --attention_type and "
                     "--attention_param (loading will then list the keys that differ)")


def classifier_classes(state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """The class count of a state dict's classifier (None if it has none of ours)."""
    for arch in ARCHS:
        key = ARCHS.get(arch).classifier + ".weight"
        if key in state_dict:
            return int(state_dict[key].shape[0])
    return None


def likely_cause(state_dict: Mapping[str, torch.Tensor], arch: str, attention_type: str, num_classes: int) -> str:
    """Why ``state_dict`` does not load into ``create_net(arch, attention_type, num_classes=num_classes)``."""
    matches = identify_layouts(state_dict)
    if (arch, attention_type) in matches:
        return (f"the checkpoint has {classifier_classes(state_dict)} classes but the data has {num_classes} "
                "(evaluate on the dataset it was trained on)")
    if matches:
        found = " or ".join(f"-a {a} --attention_type {t}" for a, t in matches)
        return f"the checkpoint is a different network: it fits {found}"
    if classifier_classes(state_dict) is not None:
        return ("the attention parameter (e.g. the SE/CBAM reduction ratio) differs from the checkpoint's, "
                "or it comes from another code base")
    return "the file is not a checkpoint of this code base's networks"
