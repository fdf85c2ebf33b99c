#!/usr/bin/env python
"""Grad-CAM and SimAM attention maps of trained networks on a few images, as in the SimAM paper's Figure 6.

For every (image, checkpoint) the figure has a row: the input crop, the Grad-CAM of the top-1 class (or
--target-class) on the last convolutional stage as a jet overlay, and, for SimAM networks, the mean SimAM gate
sigmoid(1/e_t*) over channels of one SimAM module per stage (blank columns for other networks).

Examples:
    python scripts/visualize_attention.py --images cat.jpg dog.jpg \\
        --checkpoints ckpts/imagenet-resnet50/model_best.pth.tar \\
            ckpts/imagenet-resnet50-simam-param0.1/model_best.pth.tar \\
        --labels ResNet-50 SimAM-R50 -o results/attention.png
    python scripts/visualize_attention.py --images cat.jpg --checkpoints release_r50_simam.pth.tar \\
        -a resnet50 --attention_type simam
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402
from torch import nn  # noqa: E402

import networks  # noqa: E402
from scripts._cli import add_network_arguments, make_cli  # noqa: E402
from training.errors import UserError  # noqa: E402
from training.presets import IMAGENET_MEAN, IMAGENET_STD, eval_transform  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", nargs="+", required=True, metavar="IMG", help="image files (any format PIL reads)")
    parser.add_argument("--checkpoints", nargs="+", required=True, metavar="CKPT",
                        help="checkpoints: ours (.pth.tar or .safetensors), the official release's, or bare state "
                             "dicts")
    parser.add_argument("--labels", nargs="+", default=None, metavar="LABEL",
                        help="one row label per checkpoint (default: the file name and network)")
    add_network_arguments(parser)
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classifier size when the checkpoint has no classifier weight (default: from the weights)")
    parser.add_argument("--target-class", type=int, default=None,
                        help="class index explained by Grad-CAM (default: the top-1 prediction)")
    parser.add_argument("--image-size", type=int, default=224, help="centre crop size (default: 224)")
    parser.add_argument("--resize-size", type=int, default=256, help="shorter side before cropping (default: 256)")
    parser.add_argument("-o", "--output", default=os.path.join("results", "attention.png"),
                        help="image to write; the format follows the extension (default: results/attention.png)")
    return parser


# ----------------------------------------------------------------------------------------------- networks

@dataclass
class LoadedNet:
    """A network ready for visualisation and how it was identified."""

    model: nn.Module
    path: str
    arch: str
    attention_type: str
    attention_param: float | None
    num_classes: int
    classes: list | None = None
    label: str = ""


def load_network(path: str, arch: str | None = None, attention_type: str | None = None,
                 attention_param: float | None = None, num_classes: int | None = None) -> LoadedNet:
    """``networks.load_network`` (a ``weights_only`` torch file or safetensors, the network identified, strict
    loading, eval mode), with the parameters frozen: Grad-CAM differentiates w.r.t. activations only.

    Raises ``UserError`` (one line) for a missing, unsafe or non-checkpoint file and for a network mismatch.
    """
    try:
        loaded = networks.load_network(path, arch, attention_type, attention_param, num_classes)
    except ValueError as error:
        raise UserError(str(error).splitlines()[0].replace(" were asked for", " were given with --num-classes")
                        ) from None
    loaded.model.requires_grad_(False)
    return LoadedNet(loaded.model, path, loaded.arch, loaded.attention_type, loaded.attention_param,
                     loaded.num_classes, loaded.classes)


def describe(net: LoadedNet) -> str:
    """'resnet18 + simam (e_lambda=0.1)'."""
    if net.attention_type == "none":
        return net.arch
    return f"{net.arch} + {networks.describe_attention(net.attention_type, net.attention_param)}"


# ----------------------------------------------------------------------------------------------- images

def load_image(path: str, resize_size: int, crop_size: int) -> tuple[torch.Tensor, np.ndarray]:
    """(normalised 1x3xHxW input, HxWx3 crop in [0, 1] for display): resize shorter side, centre crop."""
    if not os.path.isfile(path):
        raise UserError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"{path}: not a readable image "
                        f"({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None
    x = eval_transform(resize_size, crop_size)(image).unsqueeze(0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    crop = (x[0] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    return x, crop


# ----------------------------------------------------------------------------------------------- attention

def simam_weight_map(x: torch.Tensor, e_lambda: float) -> torch.Tensor:
    """Mean over channels of SimAM's gate sigmoid(1/e_t*) for an (N, C, H, W) input: (N, H, W).

    Per channel with M = H*W: d = (x - mean)^2, v = sum(d) / (M - 1), 1/e_t* = d / (4 (v + lambda)) + 0.5
    (M = 1: d = v = 0, as in ``networks.simam``).
    """
    return networks.simam_gate(x.detach().float(), e_lambda).mean(dim=1)


def arch_spec(model: nn.Module, arch: str | None = None) -> networks.ArchSpec:
    """The registry entry of ``arch``; without one, that of the first registered arch whose stages, Grad-CAM layer
    and classifier ``model`` has."""
    if arch is not None:
        return networks.ARCHS.get(arch)
    modules = dict(model.named_modules())
    for name in networks.ARCHS:
        spec = networks.ARCHS.get(name)
        if all(node in modules for node in (*spec.feature_nodes, spec.gradcam_layer, spec.classifier)):
            return spec
    raise UserError(f"no Grad-CAM target layer known for {type(model).__name__}")


def select_simam_modules(model: nn.Module, arch: str | None = None) -> list[tuple[str, nn.Module]]:
    """One SimAM module per stage: the last one in each of feature levels 1-4 (C2-C5: from the end of the previous
    level's ``feature_nodes`` module to the end of its own, e.g. layer1..layer4). Empty for networks without SimAM."""
    named = list(model.named_modules())
    if not any(isinstance(m, networks.SimAM) for _, m in named):
        return []
    nodes = arch_spec(model, arch).feature_nodes
    ends = [max(i for i, (name, _) in enumerate(named) if name == node or name.startswith(node + "."))
            for node in nodes]
    chosen = []
    for previous_end, end in zip(ends, ends[1:]):  # levels 1-4; level 0 is the stem
        in_stage = [named[i] for i in range(previous_end + 1, end + 1) if isinstance(named[i][1], networks.SimAM)]
        chosen += in_stage[-1:]
    return chosen


def target_layer(model: nn.Module, arch: str | None = None) -> nn.Module:
    """Grad-CAM's layer: the arch's ``gradcam_layer``, its last convolutional stage (e.g. ``layer4``)."""
    return model.get_submodule(arch_spec(model, arch).gradcam_layer)


def _flat(m: torch.Tensor | np.ndarray) -> bool:
    """Constant up to float rounding (e.g. a 1x1 map upsampled bilinearly)."""
    low, high = float(m.min()), float(m.max())
    return high - low <= 1e-6 * max(abs(high), abs(low), 1e-30)


def normalise(cam: torch.Tensor) -> torch.Tensor:
    """Min-max to [0, 1]; all zeros when the map is constant (no spatial information)."""
    if _flat(cam):
        return torch.zeros_like(cam)
    cam = cam - cam.min()
    return cam / cam.max()


@dataclass
class Explanation:
    """What one forward/backward pass of one image gives."""

    predicted: int
    target: int
    probability: float  # softmax probability of ``target``
    cam_raw: torch.Tensor  # relu(sum_c w_c A_c) at the target layer's resolution (h, w)
    cam: torch.Tensor  # upsampled to the input size and normalised to [0, 1]
    simam_maps: list[tuple[str, torch.Tensor]] = field(default_factory=list)  # (module name, HxW at input size)


def explain(model: nn.Module, x: torch.Tensor, target_class: int | None = None,
            arch: str | None = None) -> Explanation:
    """Grad-CAM (Selvaraju et al.) at ``target_layer(model, arch)`` and the selected SimAM maps, for one image ``x``
    (``arch``: the model's, else found from its layout).

    Forward hooks keep the target activations A (and register a hook on A for its gradient) and compute the SimAM
    maps from each selected module's input; the class score's gradient gives w_c = mean_ij dy/dA_cij, and
    cam = relu(sum_c w_c A_c), upsampled bilinearly to the input size and normalised to [0, 1].
    """
    if x.shape[0] != 1:
        raise ValueError("explain() takes one image (a batch of 1)")
    store: dict = {"maps": []}

    def keep_activation(module, inputs, output):
        store["activation"] = output
        output.register_hook(lambda grad: store.__setitem__("gradient", grad))

    def keep_simam(name):
        def hook(module, inputs, output):
            with torch.no_grad():
                store["maps"].append((name, simam_weight_map(inputs[0], module.e_lambda)[0]))
        return hook

    handles = [target_layer(model, arch).register_forward_hook(keep_activation)]
    handles += [m.register_forward_hook(keep_simam(name)) for name, m in select_simam_modules(model, arch)]
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in trainable:  # differentiate w.r.t. the activations only; no parameter .grad is written
            p.requires_grad_(False)
        with torch.enable_grad():
            logits = model(x.detach().clone().requires_grad_(True))
            probabilities = logits.detach().softmax(dim=1)[0]
            predicted = int(logits[0].argmax())
            target = predicted if target_class is None else int(target_class)
            logits[0, target].backward()
    finally:
        for handle in handles:
            handle.remove()
        for p in trainable:
            p.requires_grad_(True)
    activation, gradient = store["activation"].detach()[0], store["gradient"][0]
    weights = gradient.mean(dim=(1, 2))
    cam_raw = F.relu((weights[:, None, None] * activation).sum(dim=0))
    size = x.shape[-2:]
    cam = normalise(F.interpolate(cam_raw[None, None], size=size, mode="bilinear", align_corners=False)[0, 0])
    maps = [(name, F.interpolate(m[None, None], size=size, mode="bilinear", align_corners=False)[0, 0])
            for name, m in store["maps"]]
    return Explanation(predicted, target, float(probabilities[target]), cam_raw, cam, maps)


def overlay(crop: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The crop blended with the jet colour map of ``cam`` (both HxW, values in [0, 1])."""
    heat = plt.get_cmap("jet")(np.asarray(cam))[..., :3]
    return ((1 - alpha) * crop + alpha * heat).clip(0, 1)


# ----------------------------------------------------------------------------------------------- figure

def draw(rows: list[dict], output: str) -> None:
    """Write the grid: per row the crop, the Grad-CAM overlay and the SimAM maps (blank where there are none)."""
    n_maps = max((len(r["explanation"].simam_maps) for r in rows), default=0)
    cols = 2 + n_maps
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.3 * cols + 0.6, 2.5 * len(rows)), squeeze=False)
    for row, (r, ax_row) in enumerate(zip(rows, axes)):
        e: Explanation = r["explanation"]
        ax_row[0].imshow(r["crop"])
        ax_row[0].set_xticks([])
        ax_row[0].set_yticks([])
        ax_row[0].set_ylabel(f"{r['label']}\n{os.path.basename(r['image'])}", fontsize=8)
        ax_row[1].imshow(overlay(r["crop"], e.cam.numpy()))
        name = r["classes"][e.target] if r["classes"] and e.target < len(r["classes"]) else None
        what = "pred" if e.target == e.predicted else f"class (pred {e.predicted})"
        ax_row[1].set_title(f"Grad-CAM {what} {e.target}{' ' + str(name) if name else ''}\np={e.probability:.3f}",
                            fontsize=8)
        for col in range(n_maps):
            ax = ax_row[2 + col]
            if col < len(e.simam_maps):
                module, m = e.simam_maps[col]
                m = m.numpy()
                low, high = (m.mean() - 0.5, m.mean() + 0.5) if _flat(m) else (m.min(), m.max())
                ax.imshow(m, cmap="viridis", vmin=low, vmax=high)
                ax.set_title(f"SimAM {module}\n[{m.min():.3f}, {m.max():.3f}]", fontsize=7)
            ax.axis("off")
        ax_row[1].axis("off")
        if row == 0:
            ax_row[0].set_title("input", fontsize=8)
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)


def main(args: argparse.Namespace) -> str:
    """Write the figure and print its path; bad input raises ``UserError``."""
    if args.labels is not None and len(args.labels) != len(args.checkpoints):
        raise UserError(f"--labels gives {len(args.labels)} labels for {len(args.checkpoints)} checkpoints")
    if args.image_size < 1 or args.resize_size < args.image_size:
        raise UserError(f"need 1 <= --image-size <= --resize-size, got {args.image_size} and {args.resize_size}")
    images = [(path, *load_image(path, args.resize_size, args.image_size)) for path in args.images]
    nets = []
    for i, path in enumerate(args.checkpoints):
        net = load_network(path, args.arch, args.attention_type, args.attention_param, args.num_classes)
        if args.target_class is not None and not 0 <= args.target_class < net.num_classes:
            raise UserError(f"--target-class {args.target_class} is out of range for {path} "
                            f"({net.num_classes} classes)")
        net.label = args.labels[i] if args.labels else f"{os.path.basename(path)}\n{describe(net)}"
        nets.append(net)
    rows = []
    for image_path, x, crop in images:
        for net in nets:
            rows.append({"image": image_path, "crop": crop, "label": net.label, "classes": net.classes,
                         "explanation": explain(net.model, x, args.target_class, net.arch)})
    draw(rows, args.output)
    print(args.output)
    return args.output


cli = make_cli(main, get_args_parser)  # bad input: one line `error: ...`, exit status 2


if __name__ == "__main__":
    sys.exit(cli())
