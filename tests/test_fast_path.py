"""The fast training path (configs/fast/): compiled bf16 channels_last training on uint8 batches, checked
against an independent fp32 evaluation; exact resumption with persistent workers; no per-step host reads."""

import os

import pytest
import torch

import main_imagenet
import networks
from helpers import TINY, direct_accuracy, train_argv
from scripts.make_sample_data import make_dataset
from test_main_imagenet import run_main, same_training_state
from training.optim import build_optimizer
from training.performance import amp_dtype_for, to_device
from training.presets import IMAGENET_MEAN, IMAGENET_STD

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST_R18 = os.path.join(ROOT, "configs", "fast", "resnet18_simam.yaml")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_dataset(str(root), classes=4, train_per_class=40, val_per_class=9, size=40, seed=1)
    return root


def test_fast_recipe_trains_and_its_checkpoint_evaluates_the_same_in_fp32(data, tmp_path, capsys):
    argv = [str(data), "--config", FAST_R18, "--epochs", "3", "-b", "16", "-j", "2", "--seed", "0", "--lr", "0.05",
            "--cos_lr", "--ckpt", str(tmp_path), *TINY]
    result = run_main(argv)
    out = capsys.readouterr().out
    expected_precision = "bfloat16" if amp_dtype_for("auto", torch.device("cpu")) else "fp32"
    assert f"=> precision {expected_precision}, channels_last, torch.compile, uint8 input pipeline" in out
    assert result["val_top1"] >= 50.0, result  # 4 classes: chance is 25%
    best = torch.load(tmp_path / "imagenet-resnet18-simam-param0.1-seed0" / "model_best.pth.tar", weights_only=True)
    model = networks.create_net("resnet18", "simam", 0.1, num_classes=4)
    model.load_state_dict(best["state_dict"])  # plain keys: the compiled wrapper is not saved
    top1, _, count = direct_accuracy(model, data / "val")
    assert count == 36
    # the run validated in bf16 on the uint8 pipeline; an fp32 PIL evaluation differs by at most two images
    assert abs(top1 - best["best_acc"]) <= 2 * 100 / 36 + 1e-9


def test_uint8_pipeline_resumes_bitwise_with_persistent_workers(data, tmp_path):
    fast = ["--input-pipeline", "uint8", "--channels-last"]
    run_main(train_argv(data, tmp_path / "a", *fast, epochs=2, workers=2))
    run_main(train_argv(data, tmp_path / "b", *fast, epochs=1, workers=2))
    run_main(train_argv(data, tmp_path / "b", *fast, "--resume", tmp_path / "b" / "imagenet-resnet18-simam-param0.1-seed0",
                        epochs=2, workers=0))
    name = "imagenet-resnet18-simam-param0.1-seed0/checkpoint.pth.tar"
    same_training_state(torch.load(tmp_path / "a" / name, weights_only=True),
                        torch.load(tmp_path / "b" / name, weights_only=True))


def test_uint8_batches_are_normalised_on_the_device_like_torchvision():
    images = torch.randint(0, 256, (3, 3, 5, 7), dtype=torch.uint8)
    moved, target = to_device(images, torch.tensor([1, 2, 3]), torch.device("cpu"), torch.channels_last)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(moved, (images.float() / 255 - mean) / std, rtol=0, atol=1e-6)
    assert moved.is_contiguous(memory_format=torch.channels_last) and target.tolist() == [1, 2, 3]


def host_reads_during_training(monkeypatch, data, ckpt, batches: int) -> int:
    """How many tensor values training reads back to the host (``.item()``, ``.tolist()``, ``float()``)."""
    count = 0
    for name in ("item", "tolist", "__float__", "__bool__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original):
            nonlocal count
            count += 1
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)
    # one epoch of `batches` steps, printing only at the first and last
    run_main(train_argv(data, ckpt, "-p", "1000", "--log_freq", "1000", "--dummy", str(8 * batches), batch=8,
                        arch="resnet18", attention="simam"))
    monkeypatch.undo()
    return count


def test_host_reads_do_not_grow_with_the_number_of_steps(monkeypatch, data, tmp_path):
    few = host_reads_during_training(monkeypatch, data, tmp_path / "few", batches=3)
    many = host_reads_during_training(monkeypatch, data, tmp_path / "many", batches=9)
    assert many == few


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA synchronisation checks need a GPU")
def test_training_steps_do_not_synchronise_the_gpu(data, tmp_path):
    args = main_imagenet.get_args_parser().parse_args(
        [str(data), "--amp", "auto", "--channels-last", "--input-pipeline", "uint8", "-b", "8"])
    model = networks.create_net("resnet18", "simam", num_classes=4).cuda().to(memory_format=torch.channels_last)
    amp = amp_dtype_for("auto", torch.device("cuda"))
    optimizer = build_optimizer(model, args.lr, args.momentum, args.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    criterion = torch.nn.CrossEntropyLoss()
    batch = (torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8).pin_memory(), torch.randint(0, 4, (8,)).pin_memory())
    main_imagenet.train_step(model, *to_device(*batch, torch.device("cuda"), torch.channels_last), criterion,
                             optimizer, scaler, amp)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            main_imagenet.train_step(model, *to_device(*batch, torch.device("cuda"), torch.channels_last), criterion,
                                     optimizer, scaler, amp)
    finally:
        torch.cuda.set_sync_debug_mode("default")
