"""The fast training path (configs/recipes/fast.yaml): compiled bf16 channels_last training on uint8 batches, checked
against an independent fp32 evaluation; exact resumption with persistent workers; no per-step host reads."""

import os

import torch

import networks
from helpers import TINY, direct_accuracy, train_argv
from test_main_imagenet import run_main, same_training_state
from training.performance import amp_dtype_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST_R18 = ["--config", os.path.join(ROOT, "configs", "resnet18_simam.yaml"),
            "--config", os.path.join(ROOT, "configs", "recipes", "fast.yaml")]


def test_fast_recipe_trains_and_its_checkpoint_evaluates_the_same_in_fp32(four_class_data, tmp_path, capsys):
    argv = [str(four_class_data), *FAST_R18, "--epochs", "3", "-b", "16", "-j", "2", "--seed", "0",
            "--lr", "0.05", "--cos_lr", "--ckpt", str(tmp_path), *TINY]
    result = run_main(argv)
    out = capsys.readouterr().out
    expected_precision = "bfloat16" if amp_dtype_for("auto", torch.device("cpu")) else "fp32"
    assert f"=> precision {expected_precision}, channels_last, torch.compile, uint8 input pipeline" in out
    assert result["val_top1"] >= 50.0, result  # 4 classes: chance is 25%
    best = torch.load(tmp_path / "imagenet-resnet18-simam-param0.1-seed0" / "model_best.pth.tar", weights_only=True)
    model = networks.create_net("resnet18", "simam", 0.1, num_classes=4)
    model.load_state_dict(best["state_dict"])  # plain keys: the compiled wrapper is not saved
    top1, _, count = direct_accuracy(model, four_class_data / "val")
    assert count == 36
    # the run validated in bf16 on the uint8 pipeline; an fp32 PIL evaluation differs by at most two images
    assert abs(top1 - best["best_acc"]) <= 2 * 100 / 36 + 1e-9


def test_uint8_pipeline_resumes_bitwise_with_persistent_workers(four_class_data, tmp_path):
    fast = ["--input-pipeline", "uint8", "--channels-last"]
    run_main(train_argv(four_class_data, tmp_path / "a", *fast, epochs=2, workers=2))
    run_main(train_argv(four_class_data, tmp_path / "b", *fast, epochs=1, workers=2))
    run_main(train_argv(four_class_data, tmp_path / "b", *fast, "--resume",
                        tmp_path / "b" / "imagenet-resnet18-simam-param0.1-seed0", epochs=2, workers=0))
    name = "imagenet-resnet18-simam-param0.1-seed0/checkpoint.pth.tar"
    same_training_state(torch.load(tmp_path / "a" / name, weights_only=True),
                        torch.load(tmp_path / "b" / name, weights_only=True))


