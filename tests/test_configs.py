"""Every recipe in configs/ loads with --config and builds its network; paper rows use the release's recipe."""

import glob
import os

import pytest
import torch

import main_imagenet
import networks
from training.config import parse_with_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_ROWS = sorted(glob.glob(os.path.join(ROOT, "configs", "*_*.yaml")))


def test_one_recipe_per_paper_row():
    names = {os.path.basename(p)[:-5] for p in PAPER_ROWS}
    expected = {f"{arch}_{attention}" for arch in ("resnet18", "resnet34", "resnet50", "resnet101",
                                                   "resnext50_32x4d", "mobilenet_v2")
                for attention in ("none", "se", "cbam", "eca", "srm", "simam")}
    assert expected <= names


@pytest.mark.parametrize("path", PAPER_ROWS + [os.path.join(ROOT, "configs", "quickstart.yaml")],
                         ids=lambda p: os.path.basename(p))
def test_recipe_loads_and_builds(path):
    args = parse_with_config(main_imagenet.get_args_parser(), ["DATA", "--config", path])
    main_imagenet.check_args(args)
    main_imagenet.choose_network(args, None, None)
    with torch.device("meta"):
        networks.create_net(args.arch, args.attention_type, args.attention_param, num_classes=1000)
    if os.path.basename(path) == "quickstart.yaml":
        return
    mobilenet = args.arch == "mobilenet_v2"
    assert (args.epochs, args.lr, args.weight_decay, args.cos_lr) == (
        (150, 0.05, 4e-5, True) if mobilenet else (100, 0.1, 1e-4, False))
    assert (args.batch_size, args.momentum, args.train_crop_size, args.val_resize_size, args.val_crop_size) == \
        (256, 0.9, 224, 256, 224)
    assert args.attention_param == {"simam": 0.1, "se": 16, "cbam": 16}.get(args.attention_type)


@pytest.mark.parametrize("path", PAPER_ROWS, ids=lambda p: os.path.basename(p))
def test_fast_recipe_is_the_paper_recipe_plus_the_performance_settings(path):
    from training.performance import FAST_SETTINGS
    fast_path = os.path.join(ROOT, "configs", "fast", os.path.basename(path))
    paper = vars(parse_with_config(main_imagenet.get_args_parser(), ["DATA", "--config", path]))
    fast = vars(parse_with_config(main_imagenet.get_args_parser(), ["DATA", "--config", fast_path]))
    assert {key for key in fast if fast[key] != paper[key]} == set(FAST_SETTINGS) | {"config"}
    assert {key: fast[key] for key in FAST_SETTINGS} == FAST_SETTINGS
    assert paper["amp"] == "off" and not paper["channels_last"] and not paper["compile"]
    assert paper["input_pipeline"] == "pil"
