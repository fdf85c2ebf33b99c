"""Bad input: one line on stderr starting with 'error:', exit status 2, no traceback, nothing executed."""

import os
import shutil
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

import main_imagenet
import networks
from helpers import TINY, train_argv
from training.optim import SgdOptions
from training.schedule import LrSchedule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def broken_data(tiny_data, tmp_path):
    """A copy of the data that a test may damage."""
    copy = tmp_path / "broken"
    shutil.copytree(tiny_data, copy)
    return copy


def fails(argv, capsys, *expected):
    assert main_imagenet.cli([*map(str, argv)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for text in expected:
        assert text in err, err
    return err


def test_missing_data_folder(tmp_path, capsys):
    fails(train_argv(tmp_path / "nowhere", tmp_path), capsys, "data folder not found", "nowhere")


def test_no_data_argument(tmp_path, capsys):
    fails(["--ckpt", tmp_path], capsys, "data folder DIR is required")


@pytest.mark.parametrize("split", ["train", "val"])
def test_missing_split(broken_data, tmp_path, capsys, split):
    shutil.rmtree(broken_data / split)
    fails(train_argv(broken_data, tmp_path), capsys, f"{split} not found", "train/ and val/")


def test_class_folder_without_images(broken_data, tmp_path, capsys):
    for image in (broken_data / "train" / "n00000001").iterdir():
        image.unlink()
    (broken_data / "train" / "n00000001" / "notes.txt").write_text("not an image")
    fails(train_argv(broken_data, tmp_path), capsys, "n00000001 has no images")


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_is_named(broken_data, tmp_path, capsys, workers):
    bad = broken_data / "train" / "n00000002" / "train_02_00001.JPEG"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    err = fails(train_argv(broken_data, tmp_path, workers=workers), capsys, "cannot read image", str(bad))
    assert "Traceback" not in err


@pytest.mark.parametrize("flags, expected", [
    (["-a", "resnet19"], "unknown arch 'resnet19'; valid choices: resnet18"),
    (["--attention_type", "bam"], "unknown attention type 'bam'; valid choices: none, se, cbam, eca, srm, simam"),
    (["--attention_type", "simam", "--attention_param", "0"], "lambda"),
    (["--attention_type", "simam", "--attention_param", "-1"], "lambda"),
    (["-b", "0"], "--batch-size must be at least 1"),
    (["--label-smoothing", "1.5"], "--label-smoothing must be in [0, 1)"),
])
def test_bad_flags(tiny_data, tmp_path, capsys, flags, expected):
    fails([*train_argv(tiny_data, tmp_path), *flags], capsys, expected)


def test_gpu_that_does_not_exist(tiny_data, tmp_path, capsys):
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    fails([*train_argv(tiny_data, tmp_path), "--gpu", str(count + 3)], capsys, f"GPU {count + 3} does not exist")


def test_missing_checkpoint(tiny_data, tmp_path, capsys):
    fails([tiny_data, "-e", "--resume", tmp_path / "missing.pth.tar", *TINY], capsys, "checkpoint not found")


def test_file_that_is_not_a_checkpoint(tiny_data, tmp_path, capsys):
    (tmp_path / "notes.pth.tar").write_text("hello")
    fails([tiny_data, "-e", "--resume", tmp_path / "notes.pth.tar", *TINY], capsys, "not a checkpoint")
    torch.save({"epoch": 3}, tmp_path / "no_weights.pth.tar")
    fails([tiny_data, "-e", "--resume", tmp_path / "no_weights.pth.tar", *TINY], capsys, "not a checkpoint")


class Payload:
    """Unpickling this would create a folder: the proof that a checkpoint's code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_pickle_payload_is_refused_and_never_runs(tiny_data, tmp_path, capsys):
    marker = tmp_path / "payload_ran"
    model_keys = {"conv1.weight": torch.zeros(64, 3, 7, 7)}
    torch.save({"state_dict": model_keys, "epoch": 1, "arch": "resnet18", "extra": Payload(str(marker))},
               tmp_path / "evil.pth.tar")
    fails([tiny_data, "-e", "--resume", tmp_path / "evil.pth.tar", *TINY], capsys, "refused", "nothing was executed")
    assert not marker.exists()


def checkpoint_of(arch, attention, num_classes, path):
    import networks

    torch.save({"epoch": 1, "arch": arch, "best_acc": 0.0,
                "state_dict": networks.create_net(arch, attention, num_classes=num_classes).state_dict()}, path)
    return path


def test_checkpoint_of_another_attention(tiny_data, tmp_path, capsys):
    path = checkpoint_of("resnet18", "simam", 3, tmp_path / "simam.pth.tar")
    fails([tiny_data, "-j", "0", "-e", "--resume", path, "--attention_type", "se", "--ckpt", tmp_path, *TINY], capsys,
          "does not fit resnet18 + se with 3 classes", "missing keys: ", "unexpected keys: ",
          "likely cause: the checkpoint is a different network: it fits -a resnet18 --attention_type simam")


def test_checkpoint_of_another_arch(tiny_data, tmp_path, capsys):
    path = checkpoint_of("resnet34", "none", 3, tmp_path / "r34.pth.tar")
    fails([tiny_data, "-j", "0", "-e", "--resume", path, "-a", "resnet18", "--attention_type", "none", "--ckpt",
           tmp_path, *TINY], capsys, "unexpected keys: layer1.2.", "it fits -a resnet34 --attention_type none")


def test_checkpoint_with_another_class_count(tiny_data, tmp_path, capsys):
    path = checkpoint_of("resnet18", "none", 1000, tmp_path / "imagenet.pth.tar")
    fails([tiny_data, "-j", "0", "-e", "--resume", path, "--ckpt", tmp_path, *TINY], capsys,
          "shape mismatch (checkpoint vs model): fc.weight (1000, 512) vs (3, 512)",
          "likely cause: the checkpoint has 1000 classes but the data has 3")


@pytest.mark.slow
def test_command_line_has_no_traceback(tmp_path):
    """The real script, end to end: a bad flag value gives one line and exit status 2."""
    done = subprocess.run([sys.executable, "main_imagenet.py", str(tmp_path), "-a", "vgg16"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: unknown arch 'vgg16'; valid choices: resnet18, resnet34, "
                                                "resnet50, resnet101, resnet152, resnext50_32x4d, mobilenet_v2"]


def test_unknown_config_key(tmp_path, capsys):
    (tmp_path / "recipe.yaml").write_text("arch: resnet50\nlearning_rate_x: 3\n")
    fails(["--config", tmp_path / "recipe.yaml"], capsys, "unknown option(s) learning_rate_x")


@pytest.mark.parametrize("flags, expected", [
    (["--accum-steps", "3"], "--accum-steps 3 does not divide -b 16"),
    (["--accum-steps", "0"], "--accum-steps must be at least 1"),
    (["--train-size-schedule", "160:192:5"], "expected START:END:FROM_EPOCH:TO_EPOCH"),
    (["--train-size-schedule", "160:192:9:3"], "expected START:END:FROM_EPOCH:TO_EPOCH"),
    (["--mixup-alpha", "-1"], "--mixup-alpha must not be negative"),
    (["--random-erase", "1.5"], "--random-erase is a probability"),
    (["--model-ema-decay", "1"], "--model-ema-decay must be in (0, 1)"),
    (["--model-ema-steps", "0"], "--model-ema-steps must be at least 1"),
    (["--lr-scheduler", "multistep"], "milestones"),
    (["--lr-scheduler", "step", "--lr-min", "0.001"], "lr_min applies to the cosine and linear schedules only"),
    (["--cos_lr", "--lr-scheduler", "cosine"], "--cos_lr is the release's name for --lr-scheduler release_cosine"),
    (["--eval-ema"], "--eval-ema picks the checkpoint's EMA weights"),
    (["--checkpoint-interval", "-1"], "--checkpoint-interval must not be negative"),
])
def test_bad_recipe_values(tiny_data, tmp_path, capsys, flags, expected):
    fails(train_argv(tiny_data, tmp_path, *flags), capsys, expected)


def test_eval_ema_of_a_checkpoint_without_an_ema(tiny_data, tmp_path, capsys):
    checkpoint = tmp_path / "plain.pth"
    torch.save({"state_dict": networks.create_net("resnet18", "simam", num_classes=3).state_dict()},
               checkpoint)
    fails(train_argv(tiny_data, tmp_path, "-e", "--eval-ema", "--resume", checkpoint), capsys,
          "has no EMA weights ('model_ema')")


def test_schedule_flags_map_to_the_schedule_by_name():
    parse = main_imagenet.get_args_parser().parse_args
    assert LrSchedule.from_args(parse(["D"])).name == "step"
    assert LrSchedule.from_args(parse(["D", "--cos_lr"])).name == "release_cosine"
    kwargs = asdict(LrSchedule.from_args(parse(["D", "--lr-scheduler", "multistep", "--lr-milestones", "3", "7",
                                                "--lr-gamma", "0.5", "--epochs", "9", "--warmup-epochs", "1"])))
    assert kwargs == dict(epochs=9, name="multistep", warmup_epochs=1.0, step_size=30, gamma=0.5, milestones=(3, 7),
                          lr_min=0.0)
    defaults = asdict(SgdOptions.from_args(parse(["D"])))
    assert defaults == dict(lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=False, norm_weight_decay=None,
                            bias_weight_decay=None)
