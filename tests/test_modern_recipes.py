"""The modern recipe options end to end: off by default (a plain reference loop, bitwise), all on and resumed after a
SIGTERM (bitwise), the EMA's evaluation, checkpoint and export, SyncBN's checkpoints, and a modern recipe learning."""

import json
import random
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torchvision import datasets, transforms

import main_imagenet
import networks
from helpers import ROOT, direct_accuracy, train_argv
from test_main_imagenet import run_main, same_training_state
from training.errors import UserError

RUN = "imagenet-resnet18-simam-param0.1-seed0"


def test_with_every_new_option_at_its_default_training_is_a_plain_reference_loop(three_class_data, tmp_path):
    """One epoch (3 steps of 16) against a loop written here: torchvision's transforms and torch's SGD, with the
    data order and per-sample seeds as the sampler defines them (a permutation per epoch, a seed per position)."""
    run_main(train_argv(three_class_data, tmp_path, epochs=1))
    ours = torch.load(tmp_path / RUN / "checkpoint.pth.tar", weights_only=True)

    seed, epoch = 0, 0
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model = networks.create_net("resnet18", "simam", 0.1, num_classes=3)
    # torch's SGD as one fused kernel: its other implementations round the last bit of a few values differently
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, fused=True)
    augment = transforms.Compose([transforms.RandomResizedCrop(32), transforms.RandomHorizontalFlip(),
                                  transforms.ToTensor(), transforms.Normalize((0.485, 0.456, 0.406),
                                                                              (0.229, 0.224, 0.225))])
    dataset = datasets.ImageFolder(str(three_class_data / "train"))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    model.train()
    for start in range(0, len(dataset), 16):
        images, labels = [], []
        for position in range(start, start + 16):
            image, label = dataset[order[position]]
            torch.manual_seed(((seed * 1_000_003 + epoch) * 100_000_007 + position) % (2 ** 63))
            images.append(augment(image))
            labels.append(label)
        loss = nn.functional.cross_entropy(model(torch.stack(images)), torch.tensor(labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for key, value in model.state_dict().items():
        assert torch.equal(ours["state_dict"][key], value), key
    assert "model_ema" not in ours


EVERYTHING = ("--model-ema", "--model-ema-steps", "2", "--model-ema-decay", "0.999", "--mixup-alpha", "0.2",
              "--cutmix-alpha", "1.0", "--auto-augment", "ta_wide", "--random-erase", "0.25", "--accum-steps", "2",
              "--train-size-schedule", "32:64:0:2", "--label-smoothing", "0.1", "--lr-scheduler", "cosine",
              "--warmup-epochs", "0.5", "--nesterov", "--norm-weight-decay", "0", "--tta", "flip")


@pytest.mark.slow
def test_sigterm_with_everything_on_resumes_bitwise(three_class_data, tmp_path):
    argv = train_argv(three_class_data, tmp_path / "stopped", "-p", "1", *EVERYTHING, epochs=2)
    process = subprocess.Popen([sys.executable, "main_imagenet.py", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith("Epoch: [1][0/3]"):  # epoch 1: crops of 64 px, the EMA past its warmup
            process.send_signal(signal.SIGTERM)
            break
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0 and "=> stopped by SIGTERM at epoch 1, iteration" in out, err[-2000:]
    run_dir = tmp_path / "stopped" / RUN
    assert torch.load(run_dir / "checkpoint.pth.tar", weights_only=True)["iteration"] < 3
    resumed = run_main(train_argv(three_class_data, tmp_path / "stopped", *EVERYTHING, "--resume", run_dir, epochs=2))
    straight = run_main(train_argv(three_class_data, tmp_path / "straight", *EVERYTHING, epochs=2))
    a = torch.load(run_dir / "checkpoint.pth.tar", weights_only=True)
    b = torch.load(tmp_path / "straight" / RUN / "checkpoint.pth.tar", weights_only=True)
    same_training_state(a, b)
    for key, value in a["model_ema"].items():
        assert torch.equal(value, b["model_ema"][key]), key
    assert resumed["val_top1_ema"] == straight["val_top1_ema"] and resumed["train_loss"] == straight["train_loss"]


def test_ema_is_evaluated_saved_evaluated_again_and_exported(three_class_data, tmp_path):
    result = run_main(train_argv(three_class_data, tmp_path, "--model-ema", "--model-ema-steps", "1",
                                 "--model-ema-decay", "0.9", epochs=2))
    run_dir = tmp_path / RUN
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all({"val_top1_ema", "val_top5_ema", "val_loss_ema"} <= set(record) for record in records)
    saved = torch.load(run_dir / "checkpoint.pth.tar", weights_only=True)
    assert saved["best_of"] in ("model", "ema")
    assert saved["best_acc"] == max(max(r["val_top1"], r["val_top1_ema"]) for r in records)
    ema_weights = {key[len("module."):]: value for key, value in saved["model_ema"].items() if key != "n_averaged"}
    assert any(not torch.equal(ema_weights[key], saved["state_dict"][key]) for key in ema_weights)

    # -e --eval-ema: the EMA weights, evaluated here without the project's evaluation code
    plain = networks.create_net("resnet18", "simam", 0.1, num_classes=3)
    plain.load_state_dict(ema_weights, strict=True)
    top1, top5, count = direct_accuracy(plain, three_class_data / "val")
    evaluated = run_main(train_argv(three_class_data, tmp_path, "-e", "--eval-ema", "--resume",
                                    run_dir / "checkpoint.pth.tar"))
    assert (evaluated["top1"], evaluated["weights"], evaluated["n_images"]) == (pytest.approx(top1), "ema", count)
    assert evaluated["top1"] == pytest.approx(result["val_top1_ema"])

    run_main(train_argv(three_class_data, tmp_path, "--save_weights", tmp_path / "ema.pth", "--eval-ema", "--resume",
                        run_dir / "checkpoint.pth.tar"))
    exported = torch.load(tmp_path / "ema.pth", weights_only=True)["state_dict"]
    assert exported.keys() == ema_weights.keys() and all(torch.equal(exported[k], ema_weights[k]) for k in exported)


def test_flip_tta_is_recorded_in_the_evaluation_json(three_class_data, tmp_path):
    run_main(train_argv(three_class_data, tmp_path, epochs=1))
    checkpoint = tmp_path / RUN / "checkpoint.pth.tar"
    single = run_main(train_argv(three_class_data, tmp_path, "-e", "--resume", checkpoint))
    flip = run_main(train_argv(three_class_data, tmp_path, "-e", "--resume", checkpoint, "--tta", "flip",
                               "--eval-json", tmp_path / "flip.json"))
    assert json.loads((tmp_path / "flip.json").read_text())["tta"] == "flip" and single["tta"] == "none"
    assert flip["loss"] != single["loss"]


def test_sync_bn_trains_and_its_checkpoints_load_strictly_into_the_plain_model(three_class_data, tmp_path):
    """One process on the CPU: torch's SyncBatchNorm computes plain BatchNorm there (nothing to synchronise)."""
    plain_run = run_main(train_argv(three_class_data, tmp_path / "plain", epochs=1))
    synced_run = run_main(train_argv(three_class_data, tmp_path / "sync", "--sync-bn", epochs=1))
    synced = torch.load(tmp_path / "sync" / RUN / "checkpoint.pth.tar", weights_only=True)
    plain = networks.create_net("resnet18", "simam", 0.1, num_classes=3)
    plain.load_state_dict(synced["state_dict"], strict=True)
    assert direct_accuracy(plain, three_class_data / "val")[0] == pytest.approx(synced_run["val_top1"])
    # the plain run fuses each SimAM with its BatchNorm (networks/simam_bn.py), SyncBN runs them one by one: the same
    # values up to rounding
    assert synced_run["val_top1"] == plain_run["val_top1"]
    assert synced_run["train_loss"] == pytest.approx(plain_run["train_loss"], rel=1e-4)


def test_sync_bn_conversion_keeps_the_state_dict_and_evaluates_the_same():
    model = networks.create_net("resnet50", "simam", num_classes=10).eval()
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(networks.create_net("resnet50", "simam", num_classes=10))
    batch_norms = [m for m in converted.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert batch_norms and all(isinstance(m, nn.SyncBatchNorm) for m in batch_norms)
    converted.load_state_dict(model.state_dict(), strict=True)
    model.load_state_dict(converted.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(converted.eval()(x), model(x))


def test_sync_bn_with_several_cpu_processes_is_a_one_line_error(three_class_data, tmp_path):
    from training import run
    from training.distributed import Context

    args = main_imagenet.get_args_parser().parse_args(train_argv(three_class_data, tmp_path, "--sync-bn"))
    config = main_imagenet.check_args(args)
    spec = run.resolve_run(config, None, Context(torch.device("cpu")))
    with pytest.raises(UserError, match="--sync-bn runs on GPUs only"):
        run.set_up(config, spec, None, Context(torch.device("cpu"), rank=0, world_size=2))


@pytest.mark.slow
def test_a_modern_recipe_learns_well_above_chance(four_class_data, tmp_path):
    result = run_main(train_argv(four_class_data, tmp_path, "--lr", "0.05", "--lr-scheduler", "cosine",
                                 "--warmup-epochs", "1", "--label-smoothing", "0.1", "--mixup-alpha", "0.2",
                                 "--cutmix-alpha", "1.0", "--auto-augment", "ta_wide", "--random-erase", "0.1",
                                 "--norm-weight-decay", "0", "--model-ema", "--model-ema-steps", "1",
                                 "--model-ema-decay", "0.995", epochs=6))
    print("modern recipe:", {key: result[key] for key in ("val_top1", "val_top1_ema", "best_acc")})
    assert result["best_acc"] >= 50.0, result  # 4 classes: chance is 25%
