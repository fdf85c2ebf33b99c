"""scripts/detection_example.py: a torchvision detector on a SimAM-ResNet-50 FPN backbone trains and evaluates."""

import math

import pytest
import torch
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d

import networks
from helpers import randomize_bn_statistics
from scripts import detection_example

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 64


def test_faster_rcnn_on_simam_resnet50_trains_and_evaluates():
    torch.manual_seed(0)
    model = detection_example.build_detector("resnet50", "simam", num_classes=3, image_size=SIZE)
    backbone = model.backbone
    assert isinstance(backbone, BackboneWithFPN) and backbone.out_channels == 256
    assert isinstance(backbone.body.layer1[0].conv2[1], networks.SimAM)  # our network, SimAM in every block
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.body.modules())  # frozen BN
    before = backbone.body.layer3[0].conv2[0].weight.detach().clone()

    images, targets = detection_example.synthetic_batch(2, SIZE, 3, torch.Generator().manual_seed(0))
    model.train()
    losses = model(images, targets)
    assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    loss = sum(losses.values())
    assert math.isfinite(loss.item())
    loss.backward()
    for block in (backbone.body.layer1[0], backbone.body.layer4[2]):  # gradients reach the SimAM blocks
        grad = block.conv2[0].weight.grad  # the 3x3 conv whose output SimAM gates
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0

    steps = detection_example.train_steps(model, steps=1, batch_size=2, image_size=SIZE, num_classes=3)
    assert len(steps) == 1 and math.isfinite(steps[0])
    assert not torch.equal(backbone.body.layer3[0].conv2[0].weight, before)  # the step updated the backbone

    detections = detection_example.detect(model, images)
    assert len(detections) == 2
    for d in detections:
        assert d["boxes"].shape[1:] == (4,) and len(d["boxes"]) == len(d["scores"]) == len(d["labels"])
        assert ((d["labels"] >= 1) & (d["labels"] <= 3)).all()


def test_imagenet_checkpoint_loads_into_the_detector_backbone(tmp_path):
    """An official-format ImageNet checkpoint goes into the FPN backbone strictly (classifier dropped); frozen BN
    keeps its statistics, so the backbone computes what the classification network computes."""
    arch = "resnet18"
    classifier = randomize_bn_statistics(networks.create_net(arch, "simam")).eval()
    path = tmp_path / "release.pth.tar"
    torch.save({"epoch": 100, "arch": arch, "best_acc1": torch.tensor(71.2),
                "state_dict": {"module." + k: v for k, v in classifier.state_dict().items()}}, path)
    backbone = networks.fpn_backbone(arch, "simam", weights=path)
    assert any(isinstance(m, FrozenBatchNorm2d) for m in backbone.body.modules())
    torch.testing.assert_close(backbone.body.layer2[1].conv2[0].weight, classifier.layer2[1].conv2[0].weight)
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        c5 = backbone.body(x)["3"]
        expected = classifier.layer4(classifier.layer3(classifier.layer2(classifier.layer1(
            classifier.maxpool(classifier.relu(classifier.bn1(classifier.conv1(x))))))))
    torch.testing.assert_close(c5, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="Missing key"):  # a checkpoint of another network does not fit
        networks.fpn_backbone(arch, "se", weights=path)


def test_cli(tmp_path, capsys):
    assert detection_example.cli(["-a", "resnet18", "--detector", "retinanet", "--steps", "1",
                                  "--image-size", "64", "--simam-impl", "eager"]) == 0
    out = capsys.readouterr().out
    assert "retinanet on resnet18 + simam FPN backbone" in out and "step 1/1: loss" in out and "evaluation:" in out
    assert detection_example.cli(["--weights", str(tmp_path / "missing.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "checkpoint not found" in err
    assert detection_example.cli(["--detector", "yolo"]) == 2
    assert "invalid choice: 'yolo'" in capsys.readouterr().err
