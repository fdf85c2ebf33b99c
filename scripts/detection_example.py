#!/usr/bin/env python
"""A torchvision detector on a SimAM backbone: Faster R-CNN (or RetinaNet) with an FPN over SimAM-ResNet-50.

The backbone is ``networks.fpn_backbone``: torchvision's ``BackboneWithFPN`` over the network's C2-C5 stages,
BatchNorm frozen, with an ImageNet checkpoint loaded into it when --weights is given (ours, the release's or a
bare state dict, read with weights_only=True; the classifier is dropped, every other key must match). The
script trains a few steps on generated images of coloured rectangles with their boxes and runs an evaluation
forward, on the CPU at a small size: a starting point for training on a real dataset (e.g. torchvision's
detection references with this backbone).

Examples:
    python scripts/detection_example.py
    python scripts/detection_example.py --weights model_best_in_100_epochs.pth.tar
    python scripts/detection_example.py --detector retinanet -a resnet18 --steps 5 --image-size 160
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torchvision.models.detection import FasterRCNN, RetinaNet  # noqa: E402
from torchvision.models.detection.anchor_utils import AnchorGenerator  # noqa: E402

import networks  # noqa: E402
from scripts._cli import make_cli  # noqa: E402
from training.errors import TrainingError, UserError  # noqa: E402

DETECTORS = ("fasterrcnn", "retinanet")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line (``error: ...``, exit status 2) instead of usage + message
        raise UserError(message)


def get_args_parser() -> argparse.ArgumentParser:
    parser = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None, metavar="CKPT",
                        help="ImageNet checkpoint of the backbone (default: none)")
    parser.add_argument("-a", "--arch", default="resnet50",
                        help=f"{', '.join(networks.ARCHS.names())} (default: resnet50)")
    parser.add_argument("--attention_type", default="simam",
                        help=f"{', '.join(networks.ATTENTIONS.names())} (default: simam)")
    parser.add_argument("--attention_param", type=float, default=None,
                        help="default: the module's (lambda 0.1 for simam)")
    parser.add_argument("--detector", default="fasterrcnn", choices=DETECTORS, help="default: fasterrcnn")
    parser.add_argument("--num-classes", type=int, default=3, help="object classes, background excluded (default: 3)")
    parser.add_argument("--image-size", type=int, default=128, help="image side in pixels (default: 128)")
    parser.add_argument("--steps", type=int, default=3, help="training steps (default: 3)")
    parser.add_argument("-b", "--batch-size", type=int, default=2, help="images per step (default: 2)")
    parser.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (default: 0.01)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--simam-impl", default=None, choices=networks.SIMAM_IMPLEMENTATIONS,
                        help="how SimAM runs (default: SIMAM_IMPL, else auto: compiled kernels, built in about half "
                             "a minute on a CPU)")
    return parser


def build_detector(arch: str = "resnet50", attention_type: str = "simam", attention_param: float | None = None,
                   weights: str | None = None, num_classes: int = 3, image_size: int = 128,
                   detector: str = "fasterrcnn") -> nn.Module:
    """A torchvision detector for ``num_classes`` object classes on our network with an FPN, for square
    ``image_size`` images (the detector's transform resizes to that size)."""
    backbone = networks.fpn_backbone(arch, attention_type, attention_param, weights=weights)
    size = {"min_size": image_size, "max_size": image_size}
    if detector == "fasterrcnn":
        return FasterRCNN(backbone, num_classes=num_classes + 1, **size)  # + background
    if detector == "retinanet":
        # one anchor size per FPN level (P2-P5 and the max-pooled level), three scales and ratios each
        sizes = tuple((s, round(s * 2 ** (1 / 3)), round(s * 2 ** (2 / 3))) for s in (16, 32, 64, 128, 256))
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
        return RetinaNet(backbone, num_classes=num_classes + 1, anchor_generator=anchors, **size)
    raise ValueError(f"unknown detector {detector!r}; valid choices: {', '.join(DETECTORS)}")


def synthetic_batch(batch_size: int, image_size: int, num_classes: int,
                    generator: torch.Generator) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """Images in [0, 1] of 1-3 filled rectangles on noise, with their boxes (x1, y1, x2, y2) and labels 1..K;
    a class has its own colour."""
    colours = torch.rand(num_classes + 1, 3, generator=generator)
    images, targets = [], []
    for _ in range(batch_size):
        image = 0.2 * torch.rand(3, image_size, image_size, generator=generator)
        boxes, labels = [], []
        for _ in range(int(torch.randint(1, 4, (1,), generator=generator))):
            w, h = (torch.randint(image_size // 6, image_size // 2, (2,), generator=generator)).tolist()
            x = int(torch.randint(0, image_size - w, (1,), generator=generator))
            y = int(torch.randint(0, image_size - h, (1,), generator=generator))
            label = int(torch.randint(1, num_classes + 1, (1,), generator=generator))
            image[:, y:y + h, x:x + w] = colours[label, :, None, None]
            boxes.append([x, y, x + w, y + h])
            labels.append(label)
        images.append(image)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
    return images, targets


def train_steps(model: nn.Module, steps: int, batch_size: int, image_size: int, num_classes: int,
                lr: float = 0.01, seed: int = 0) -> list[float]:
    """``steps`` SGD steps on generated batches; returns the total loss of each step."""
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    model.train()
    losses = []
    for _ in range(steps):
        images, targets = synthetic_batch(batch_size, image_size, num_classes, generator)
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def detect(model: nn.Module, images: list[Tensor]) -> list[dict[str, Tensor]]:
    """The evaluation forward: boxes, labels and scores per image."""
    return model.eval()(images)


def main(args: argparse.Namespace) -> dict:
    """Build, train a few steps, evaluate; prints one line each. Bad input raises ``UserError``, a non-finite
    loss ``TrainingError``."""
    if min(args.num_classes, args.image_size, args.steps, args.batch_size) < 1 or args.image_size < 32:
        raise UserError("--num-classes, --steps and --batch-size must be positive and --image-size at least 32")
    torch.manual_seed(args.seed)
    if args.simam_impl:
        networks.set_simam_implementation(args.simam_impl)
    try:
        model = build_detector(args.arch, args.attention_type, args.attention_param, args.weights,
                               args.num_classes, args.image_size, args.detector)
    except ValueError as error:
        raise UserError(str(error)) from None
    name = args.arch if args.attention_type == "none" else f"{args.arch} + {args.attention_type}"
    weights = f"ImageNet weights from {args.weights}" if args.weights else "random init"
    print(f"{args.detector} on {name} FPN backbone ({weights}), "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters", flush=True)
    losses = train_steps(model, args.steps, args.batch_size, args.image_size, args.num_classes, args.lr, args.seed)
    for step, loss in enumerate(losses, 1):
        print(f"step {step}/{args.steps}: loss {loss:.4f}", flush=True)
    if not all(math.isfinite(loss) for loss in losses):
        raise TrainingError("the loss is not finite; try a smaller --lr")
    images, _ = synthetic_batch(2, args.image_size, args.num_classes, torch.Generator().manual_seed(args.seed + 1))
    detections = detect(model, images)
    counts = ", ".join(str(len(d["boxes"])) for d in detections)
    print(f"evaluation: {counts} detections on {len(images)} images", flush=True)
    return {"losses": losses, "detections": detections}


cli = make_cli(main, get_args_parser)


if __name__ == "__main__":
    sys.exit(cli())
