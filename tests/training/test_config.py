"""Every recipe in configs/ loads with --config and builds its network; paper rows use the release's recipe;
``_base_`` overlays resolve as documented."""

import argparse
import glob
import os

import pytest
import torch
import yaml

import main_imagenet
import networks
from helpers import ROOT
from training.config import parse_with_config, read_config, save_config
from training.errors import UserError

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
    network = networks.identify_network(None, args.arch, args.attention_type, args.attention_param)
    with torch.device("meta"):
        network.create(num_classes=1000)
    if os.path.basename(path) == "quickstart.yaml":
        return
    mobilenet = args.arch == "mobilenet_v2"
    assert (args.epochs, args.lr, args.weight_decay, args.cos_lr) == (
        (150, 0.05, 4e-5, True) if mobilenet else (100, 0.1, 1e-4, False))
    assert (args.batch_size, args.momentum, args.train_crop_size, args.val_resize_size, args.val_crop_size) == \
        (256, 0.9, 224, 256, 224)
    assert network.attention_param == {"simam": 0.1, "se": 16, "cbam": 16}.get(args.attention_type)


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
    assert read_config(fast_path) == {**read_config(path), **FAST_SETTINGS}
    with open(fast_path) as f:
        assert yaml.safe_load(f)["_base_"] == f"../{os.path.basename(path)}"


def write(path, text):
    """Write a recipe file (creating its folder) and return its path as a string."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_base_child_keys_win(tmp_path):
    write(tmp_path / "base.yaml", "arch: resnet50\nepochs: 100\nlr: 0.1\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\nepochs: 5\n")
    assert read_config(child) == {"arch": "resnet50", "epochs": 5, "lr": 0.1}


def test_base_list_applies_in_order_later_wins(tmp_path):
    write(tmp_path / "a.yaml", "epochs: 1\nlr: 0.1\nworkers: 3\n")
    write(tmp_path / "b.yaml", "epochs: 2\nlr: 0.2\n")
    child = write(tmp_path / "child.yaml", "_base_: [a.yaml, b.yaml]\nlr: 0.3\n")
    assert read_config(child) == {"epochs": 2, "lr": 0.3, "workers": 3}


def test_base_path_is_relative_to_the_file_naming_it(tmp_path, monkeypatch):
    write(tmp_path / "root.yaml", "arch: resnet18\nepochs: 100\n")
    write(tmp_path / "mid" / "mid.yaml", "_base_: ../root.yaml\nepochs: 50\n")
    leaf = write(tmp_path / "mid" / "deep" / "leaf.yaml", "_base_: ../mid.yaml\nlr: 0.5\n")
    monkeypatch.chdir(tmp_path / "mid" / "deep")
    assert read_config(leaf) == {"arch": "resnet18", "epochs": 50, "lr": 0.5}
    assert read_config("leaf.yaml") == read_config(leaf)


def test_base_cycle_is_one_line_error(tmp_path):
    a = write(tmp_path / "a.yaml", "_base_: b.yaml\nepochs: 1\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\nlr: 0.1\n")
    with pytest.raises(UserError, match="cycle") as error:
        read_config(a)
    assert "a.yaml" in str(error.value) and "b.yaml" in str(error.value) and "\n" not in str(error.value)
    itself = write(tmp_path / "self.yaml", "_base_: self.yaml\n")
    with pytest.raises(UserError, match="cycle"):
        read_config(itself)


def test_missing_base_names_both_files(tmp_path):
    child = write(tmp_path / "child.yaml", "_base_: nowhere.yaml\nepochs: 1\n")
    with pytest.raises(UserError) as error:
        read_config(child)
    message = str(error.value)
    assert "nowhere.yaml" in message and "child.yaml" in message and "\n" not in message


@pytest.mark.parametrize("text", ["_base_: 3\n", "_base_: [base.yaml, {a: 1}]\n"])
def test_bad_base_value(tmp_path, text):
    write(tmp_path / "base.yaml", "epochs: 1\n")
    with pytest.raises(UserError, match="_base_ must be a path or a list of paths"):
        read_config(write(tmp_path / "child.yaml", text))


def test_base_that_is_not_a_mapping(tmp_path):
    write(tmp_path / "base.yaml", "- just\n- a list\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\n")
    with pytest.raises(UserError, match="must be a mapping") as error:
        read_config(child)
    assert "base.yaml" in str(error.value) and "child.yaml" in str(error.value)


def test_base_config_round_trips_without_base_key(tmp_path):
    write(tmp_path / "base.yaml", "arch: resnet34\nattention_type: simam\nattention_param: 0.1\nepochs: 90\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\nepochs: 7\nlr: 0.2\n")
    args = parse_with_config(main_imagenet.get_args_parser(), ["DATA", "--config", child])
    assert (args.arch, args.epochs, args.lr) == ("resnet34", 7, 0.2)
    saved = str(tmp_path / "run" / "config.yaml")
    os.makedirs(os.path.dirname(saved))
    save_config(args, saved)
    with open(saved) as f:
        assert "_base_" not in yaml.safe_load(f)
    again = parse_with_config(main_imagenet.get_args_parser(), ["DATA", "--config", saved])
    assert {**vars(again), "config": None} == {**vars(args), "config": None}


def test_command_line_flag_overrides_inherited_value(tmp_path):
    write(tmp_path / "base.yaml", "arch: resnet18\nepochs: 100\nlr: 0.1\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\nlr: 0.2\n")
    args = parse_with_config(main_imagenet.get_args_parser(),
                             ["DATA", "--config", child, "--epochs", "3", "--lr", "0.4"])
    assert (args.arch, args.epochs, args.lr) == ("resnet18", 3, 0.4)


def test_fast_recipe_command_line_overrides_base():
    fast = os.path.join(ROOT, "configs", "fast", "resnet18_simam.yaml")
    args = parse_with_config(main_imagenet.get_args_parser(), ["DATA", "--config", fast, "--epochs", "2"])
    assert (args.epochs, args.arch, args.amp, args.compile) == (2, "resnet18", "auto", True)


def test_command_line_overrides_the_config(tmp_path):
    (tmp_path / "recipe.yaml").write_text("arch: mobilenet_v2\nlr: 0.05\nweight-decay: 4e-5\ncos_lr: true\n"
                                          "epochs: 150\n")
    args = parse_with_config(main_imagenet.get_args_parser(),
                             ["--config", str(tmp_path / "recipe.yaml"), "--epochs", "3"])
    assert (args.arch, args.lr, args.weight_decay, args.cos_lr, args.epochs) == ("mobilenet_v2", 0.05, 4e-5, True, 3)
    assert args.momentum == 0.9  # untouched defaults stay


MODERN = sorted(glob.glob(os.path.join(ROOT, "configs", "modern", "*_*_*.yaml")))


def test_a_modern_recipe_for_every_arch_with_simam_and_without_attention():
    names = {os.path.basename(p)[:-5] for p in MODERN}
    paper_archs = {os.path.basename(p)[:-5].rsplit("_", 1)[0] for p in PAPER_ROWS}  # the table's six networks
    assert names == {f"{arch}_{attention}_{recipe}" for arch in paper_archs for attention in ("none", "simam")
                     for recipe in ("torchvision", "ffcv")}


@pytest.mark.parametrize("path", MODERN, ids=lambda p: os.path.basename(p))
def test_modern_recipe_is_its_paper_row_plus_its_recipe(path):
    arch, attention, recipe = os.path.basename(path)[:-5].rsplit("_", 2)
    args = vars(parse_with_config(main_imagenet.get_args_parser(), ["DATA", "--config", path]))
    main_imagenet.check_args(argparse.Namespace(**args))
    paper = read_config(os.path.join(ROOT, "configs", f"{arch}_{attention}.yaml"))
    recipe_file = os.path.join(ROOT, "configs", "modern", f"recipe_{recipe}.yaml")
    assert read_config(path) == {**paper, **read_config(recipe_file)}
    assert (args["arch"], args["attention_type"]) == (arch, attention)
    with open(recipe_file) as f:  # each recipe says where it comes from
        assert {"torchvision": "torchvision's new training recipe", "ffcv": "FFCV"}[recipe] in f.readline()
