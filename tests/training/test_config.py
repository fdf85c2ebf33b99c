"""Every recipe in configs/ loads with --config and builds its network; paper rows use the release's recipe;
``_base_`` overlays resolve as documented; --config given more than once stacks files, a later one winning."""

import argparse
import glob
import os

import pytest
import torch
import yaml

import main_imagenet
import networks
from helpers import ROOT
from training.config import add_config_option, parse_with_config, read_config, save_config
from training.errors import UserError

PAPER_ROWS = sorted(glob.glob(os.path.join(ROOT, "configs", "*_*.yaml")))
RECIPES = os.path.join(ROOT, "configs", "recipes")
FAST = os.path.join(RECIPES, "fast.yaml")


def get_args_parser() -> argparse.ArgumentParser:
    return main_imagenet.get_args_parser()


def parse(*argv) -> argparse.Namespace:
    return parse_with_config(get_args_parser(), [str(a) for a in argv])


def options(args: argparse.Namespace) -> dict:
    """The effective options: what a run saves (``config``, the files they came from, is not one)."""
    return {key: value for key, value in vars(args).items() if key != "config"}


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
def test_fast_recipe_is_the_paper_recipe_plus_the_performance_settings(path, tmp_path):
    from training.performance import FAST_SETTINGS
    paper = vars(parse("DATA", "--config", path))
    fast = vars(parse("DATA", "--config", path, "--config", FAST))
    assert {key for key in fast if fast[key] != paper[key]} == set(FAST_SETTINGS) | {"config"}
    assert {key: fast[key] for key in FAST_SETTINGS} == FAST_SETTINGS
    assert paper["amp"] == "off" and not paper["channels_last"] and not paper["compile"]
    assert paper["input_pipeline"] == "pil"
    assert read_config(FAST) == FAST_SETTINGS
    with open(FAST) as f:
        assert "_base_" not in yaml.safe_load(f)  # one file for every paper row
    # the same effective options as the removed configs/fast/<row>.yaml (its paper row as _base_ + the settings)
    old_fast = write(tmp_path / "fast" / os.path.basename(path),
                     yaml.safe_dump({"_base_": os.path.relpath(path, tmp_path / "fast"), **FAST_SETTINGS}))
    assert read_config(old_fast) == {**read_config(path), **FAST_SETTINGS}
    assert options(parse("DATA", "--config", old_fast)) == options(argparse.Namespace(**fast))


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
    row = os.path.join(ROOT, "configs", "resnet18_simam.yaml")
    args = parse("DATA", "--config", row, "--config", FAST, "--epochs", "2")
    assert (args.epochs, args.arch, args.amp, args.compile) == (2, "resnet18", "auto", True)


def test_command_line_overrides_the_config(tmp_path):
    (tmp_path / "recipe.yaml").write_text("arch: mobilenet_v2\nlr: 0.05\nweight-decay: 4e-5\ncos_lr: true\n"
                                          "epochs: 150\n")
    args = parse_with_config(main_imagenet.get_args_parser(),
                             ["--config", str(tmp_path / "recipe.yaml"), "--epochs", "3"])
    assert (args.arch, args.lr, args.weight_decay, args.cos_lr, args.epochs) == ("mobilenet_v2", 0.05, 4e-5, True, 3)
    assert args.momentum == 0.9  # untouched defaults stay


def test_the_recipe_families():
    assert sorted(os.listdir(RECIPES)) == ["fast.yaml", "ffcv.yaml", "torchvision.yaml"]
    assert not os.path.exists(os.path.join(ROOT, "configs", "fast"))
    assert not os.path.exists(os.path.join(ROOT, "configs", "modern"))


MODERN = [(os.path.basename(row)[:-5], recipe) for row in PAPER_ROWS for recipe in ("torchvision", "ffcv")]


@pytest.mark.parametrize("row, recipe", MODERN, ids=[f"{row}+{recipe}" for row, recipe in MODERN])
def test_modern_recipe_is_its_paper_row_plus_its_recipe(row, recipe, tmp_path):
    arch, attention = row.rsplit("_", 1)
    path = os.path.join(ROOT, "configs", f"{row}.yaml")
    recipe_file = os.path.join(RECIPES, f"{recipe}.yaml")
    args = vars(parse("DATA", "--config", path, "--config", recipe_file))
    main_imagenet.check_args(argparse.Namespace(**args))
    paper = read_config(path)
    assert {key: args[key] for key in {**paper, **read_config(recipe_file)}} == {**paper, **read_config(recipe_file)}
    assert (args["arch"], args["attention_type"]) == (arch, attention)
    # the same effective options as the removed configs/modern/<row>_<recipe>.yaml (_base_: [row, recipe])
    bases = [os.path.relpath(base, tmp_path / "modern") for base in (path, recipe_file)]
    old = write(tmp_path / "modern" / f"{row}_{recipe}.yaml", yaml.safe_dump({"_base_": bases}))
    assert read_config(old) == {**paper, **read_config(recipe_file)}
    assert options(parse("DATA", "--config", old)) == options(argparse.Namespace(**args))
    with open(recipe_file) as f:  # each recipe says where it comes from
        assert {"torchvision": "torchvision's new training recipe", "ffcv": "FFCV"}[recipe] in f.readline()


ROWS_AND_RECIPES = [(row, recipe) for row in PAPER_ROWS for recipe in ("fast", "torchvision", "ffcv")]


@pytest.mark.parametrize("row, recipe", ROWS_AND_RECIPES,
                         ids=[f"{os.path.basename(row)[:-5]}+{recipe}" for row, recipe in ROWS_AND_RECIPES])
def test_every_paper_row_with_every_recipe_gives_valid_options(row, recipe):
    args = parse("DATA", "--config", row, "--config", os.path.join(RECIPES, f"{recipe}.yaml"))
    main_imagenet.check_args(args)
    assert (args.arch, args.attention_type) == tuple(os.path.basename(row)[:-5].rsplit("_", 1))
    assert args.config == [row, os.path.join(RECIPES, f"{recipe}.yaml")]


def test_a_later_config_wins_and_flags_win_over_all(tmp_path):
    a = write(tmp_path / "a.yaml", "arch: resnet50\nepochs: 1\nlr: 0.1\nworkers: 3\n")
    b = write(tmp_path / "b.yaml", "epochs: 2\nlr: 0.2\nweight-decay: 5.0e-05\n")
    args = parse("DATA", "--config", a, "--config", b)
    assert (args.arch, args.epochs, args.lr, args.workers, args.weight_decay) == ("resnet50", 2, 0.2, 3, 5e-5)
    args = parse("DATA", "--config", b, "--config", a)
    assert (args.arch, args.epochs, args.lr, args.workers, args.weight_decay) == ("resnet50", 1, 0.1, 3, 5e-5)
    for argv in (["--lr", "0.5", "--config", a, "--config", b], ["--config", a, "--lr", "0.5", "--config", b],
                 ["--config", a, "--config", b, "--lr", "0.5"]):
        args = parse("DATA", *argv)
        assert (args.epochs, args.lr, args.workers) == (2, 0.5, 3), argv
    assert parse("DATA", "--config", a, "--config", b).momentum == 0.9  # untouched defaults stay
    assert parse("DATA", "--config", a, "--config", a).config == [a, a]


def test_a_config_with_base_in_the_second_position(tmp_path, monkeypatch):
    first = write(tmp_path / "first.yaml", "arch: resnet50\nepochs: 100\nlr: 0.1\nworkers: 3\n")
    write(tmp_path / "recipes" / "base.yaml", "epochs: 5\nlr: 0.3\nwarmup-epochs: 2\n")
    second = write(tmp_path / "recipes" / "child.yaml", "_base_: base.yaml\nlr: 0.4\n")
    monkeypatch.chdir(tmp_path)  # the base is found beside the file naming it, not in the working folder
    args = parse("DATA", "--config", first, "--config", "recipes/child.yaml")
    # the second file's base, not only its own keys, wins over the first file
    assert (args.arch, args.epochs, args.lr, args.warmup_epochs, args.workers) == ("resnet50", 5, 0.4, 2, 3)
    args = parse("DATA", "--config", second, "--config", first)
    assert (args.epochs, args.lr, args.warmup_epochs) == (100, 0.1, 2)


def test_an_old_runs_config_yaml_loads_with_the_same_options(tmp_path):
    row = os.path.join(ROOT, "configs", "resnet50_simam.yaml")
    run = parse("DATA", "--config", row, "--config", os.path.join(RECIPES, "torchvision.yaml"),
                "--config", FAST, "--epochs", "3", "-b", "64")
    saved = str(tmp_path / "config.yaml")
    save_config(run, saved)
    with open(saved) as f:
        flat = yaml.safe_load(f)
    assert "config" not in flat and "_base_" not in flat and flat["epochs"] == 3 and flat["model_ema"] is True
    again = parse("--config", saved)
    assert options(again) == options(run) and again.config == [saved]
    # the entry file's single-file --config (before add_config_option): a string, still read
    single = argparse.ArgumentParser()
    single.add_argument("--config", default=None)
    single.add_argument("--epochs", type=int, default=90)
    single.add_argument("--lr", type=float, default=0.1)
    write(tmp_path / "small.yaml", "epochs: 3\nlr: 0.5\n")
    args = parse_with_config(single, ["--config", str(tmp_path / "small.yaml"), "--lr", "0.2"])
    assert (args.config, args.epochs, args.lr) == (str(tmp_path / "small.yaml"), 3, 0.2)


def test_an_unknown_key_names_the_file_holding_it(tmp_path):
    good = write(tmp_path / "good.yaml", "arch: resnet50\nepochs: 3\n")
    bad = write(tmp_path / "second.yaml", "lr: 0.2\nlearning_rate_x: 3\n")
    for argv in (["--config", good, "--config", bad], ["--config", bad, "--config", good]):
        with pytest.raises(UserError) as error:
            parse("DATA", *argv)
        message = str(error.value)
        assert message.startswith(f"config file {bad}: unknown option(s) learning_rate_x;"), message
        assert "good.yaml" not in message and "\n" not in message


def test_config_is_not_a_recipe_key(tmp_path):
    recipe = write(tmp_path / "recipe.yaml", "config: other.yaml\nepochs: 3\n")
    with pytest.raises(UserError, match=r"recipe.yaml: unknown option\(s\) config \(_base_ builds on other files\)"):
        parse("DATA", "--config", recipe)


def test_add_config_option_is_repeatable_and_off_by_default():
    parser = argparse.ArgumentParser()
    action = add_config_option(parser)
    assert (action.dest, action.default) == ("config", None)
    assert parser.parse_args([]).config is None
    assert parser.parse_args(["--config", "a.yaml", "--config=b.yaml"]).config == ["a.yaml", "b.yaml"]
    assert "--config configs/resnet50_simam.yaml --config configs/recipes/fast.yaml" in " ".join(
        parser.format_help().split())
