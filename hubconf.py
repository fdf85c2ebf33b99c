"""torch.hub entry points: one per network, named ``<arch>_<attention>`` (``resnet50_simam``, ``resnet50_none``, ...).

    import torch
    model = torch.hub.load("PATH/TO/THIS/REPO", "resnet50_simam", source="local", weights="resnet50_simam.safetensors")
    torch.hub.list("PATH/TO/THIS/REPO", source="local")          # every entry
    print(torch.hub.help("PATH/TO/THIS/REPO", "resnet50_simam", source="local"))

The entries are generated from the registries (``networks.ARCHS`` x ``networks.ATTENTIONS``). Without ``weights`` an
entry is ``networks.create_net``'s randomly initialised network. With ``weights`` (a local path or a URL, downloaded
once into torch.hub's cache) the file is read without executing anything in it (safetensors, or torch files with
``weights_only=True``), checked against the sha256 of a ``manifest.csv`` that lists it (``checkpoints/``), and must
hold this entry's network; its class count and attention parameter come from the file. Importing this file builds
nothing and downloads nothing.
"""

import os as _os

import networks as _networks

dependencies = ["torch", "torchvision"]

_MANIFEST = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "checkpoints", "manifest.csv")


def _build(arch, attention_type, weights=None, num_classes=None, attention_param=None, progress=True):
    """The entry ``<arch>_<attention_type>``: see the module docstring and the entries' own."""
    entry = f"{arch}_{attention_type}"
    if weights is None:
        return _networks.create_net(arch, attention_type, attention_param,
                                    1000 if num_classes is None else num_classes)
    path = _networks.weights_file(weights, progress=progress, manifest=_MANIFEST)
    try:  # the network the file holds, by its record or its key layout
        loaded = _networks.load_network(path)
    except ValueError as error:
        if "cannot tell which network" not in str(error):
            raise
        loaded = _networks.load_network(path, arch, attention_type)  # several fit: this entry's, loaded strictly
    if (loaded.arch, loaded.attention_type) != (arch, attention_type):
        raise ValueError(f"the hub entry {entry} was given weights of another network: {path} holds "
                         f"{loaded.description}; load it with the entry {loaded.arch}_{loaded.attention_type}")
    given = {"num_classes": (num_classes, loaded.num_classes), "attention_param": (attention_param,
                                                                                   loaded.attention_param)}
    for name, (value, found) in given.items():
        if value is not None and value != found:
            raise ValueError(f"{entry}: {name}={value} contradicts the weights {path} ({name} {found}): with weights, "
                             "the class count and the attention parameter come from the file; leave them out")
    return loaded.model


def _entry(arch, attention_type):
    name = f"{arch}_{attention_type}"
    spec = _networks.ATTENTIONS.get(attention_type)
    param_doc = spec.param_doc if spec.param_name else "none taken"
    about = (f"{arch} with {attention_type} attention" if attention_type != "none"
             else f"{arch} without attention")

    def entry(weights=None, num_classes=None, attention_param=None, progress=True):
        return _build(arch, attention_type, weights, num_classes, attention_param, progress)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = f"""{about} (``networks.create_net("{arch}", "{attention_type}", ...)``).

    Args:
        weights: None (random initialisation), or a weights file of this network: a local path or a URL
            (downloaded once into ``<torch.hub.get_dir()>/checkpoints``). Ours (``.safetensors`` from
            ``--save_weights``, or a checkpoint), the release's, or a bare state dict; read without executing
            anything, checked against the sha256 of a ``manifest.csv`` that lists it, loaded strictly. The class
            count and the attention parameter then come from the file; the model is returned in eval mode.
            Weights of another network are a ``ValueError`` naming the entry to use.
        num_classes: classifier size without weights (default 1000); with weights, only the file's.
        attention_param: {param_doc}; with weights, the file's.
        progress: show a progress bar while downloading.
    """
    return entry


for _arch in _networks.ARCHS:
    for _attention in _networks.ATTENTIONS:
        globals()[f"{_arch}_{_attention}"] = _entry(_arch, _attention)
