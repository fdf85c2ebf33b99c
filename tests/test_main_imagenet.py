"""End-to-end runs of main_imagenet.py on generated data: learning, evaluation, exact resumption."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml

import main_imagenet
import networks
from helpers import TINY, direct_accuracy, train_argv
from training.config import parse_with_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(argv):
    """main_imagenet.main() on parsed argv, in this process."""
    return main_imagenet.main(parse_with_config(main_imagenet.get_args_parser(), argv))


@pytest.fixture(scope="module")
def trained(four_class_data, tmp_path_factory):
    """One 4-epoch SimAM-ResNet-18 run; returns (result, run folder)."""
    ckpt = tmp_path_factory.mktemp("ckpt")
    result = run_main(train_argv(four_class_data, ckpt, "--lr", "0.05", "--cos_lr", epochs=4))
    return result, ckpt / "imagenet-resnet18-simam-param0.1-seed0"


def test_training_learns_and_logs(trained):
    result, run_dir = trained
    assert result["val_top1"] >= 70.0, result  # 4 classes: chance is 25%
    assert result["best_acc"] >= result["val_top1"]
    for name in ("checkpoint.pth.tar", "model_best.pth.tar", "log.txt", "metrics.jsonl", "config.yaml"):
        assert (run_dir / name).is_file(), name
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(run_dir))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    assert set(records[0]) >= {"epoch", "lr", "train_loss", "train_top1", "train_top5", "val_loss", "val_top1",
                               "val_top5", "epoch_time_s", "images_per_s"}
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    log = (run_dir / "log.txt").read_text().splitlines()
    assert log[:2] == ["Network - resnet18", "Attention Module - simam (e_lambda=0.1)"]
    assert log[2].startswith("Params - 11.") and log[3].startswith("FLOPs - ")
    assert sum(line.startswith("----------- Acc@1 ") for line in log) == 4
    saved = torch.load(run_dir / "checkpoint.pth.tar", weights_only=True)
    assert {"epoch", "arch", "state_dict", "best_acc", "optimizer", "scheduler", "scaler", "attention_type",
            "attention_param", "args", "rng"} <= set(saved)
    assert saved["epoch"] == 4 and saved["arch"] == "resnet18" and saved["attention_param"] == 0.1


def test_tensorboard_has_the_scalars(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained[1]))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert tags >= {"train/loss", "train/top1", "train/top5", "train/lr", "train/img_per_s", "val/loss",
                    "val/top1", "val/top5"}
    assert [e.step for e in events.Scalars("val/top1")] == [0, 1, 2, 3]


def test_saved_config_reproduces_the_run_options(trained, four_class_data):
    run_dir = trained[1]
    recipe = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert recipe["lr"] == 0.05 and recipe["cos_lr"] is True and recipe["attention_type"] == "simam"
    args = parse_with_config(main_imagenet.get_args_parser(), ["--config", str(run_dir / "config.yaml")])
    assert (args.lr, args.epochs, args.train_crop_size, args.data) == (0.05, 4, 32, str(four_class_data))


def test_evaluate_best_checkpoint_matches_direct_evaluation(trained, four_class_data, tmp_path):
    result, run_dir = trained
    best = run_main([str(four_class_data), "-j", "0", "-e", "--resume", str(run_dir / "model_best.pth.tar"),
                     "--ckpt", str(tmp_path), "--eval-json", str(tmp_path / "eval.json"), *TINY])
    # -a and --attention_type were not given: taken from the checkpoint
    assert (best["arch"], best["attention_type"], best["attention_param"]) == ("resnet18", "simam", 0.1)
    model = networks.create_net("resnet18", "simam", 0.1, num_classes=4)
    model.load_state_dict(torch.load(run_dir / "model_best.pth.tar", weights_only=True)["state_dict"])
    top1, top5, n = direct_accuracy(model, four_class_data / "val")
    assert best["top1"] == pytest.approx(top1) and best["top5"] == pytest.approx(top5) and best["n_images"] == n
    assert best["top1"] == pytest.approx(result["best_acc"])
    written = json.loads((tmp_path / "eval.json").read_text())
    assert set(written) >= {"arch", "attention_type", "attention_param", "checkpoint", "top1", "top5", "loss",
                            "n_images", "params_m", "gflops"}
    assert written["top1"] == pytest.approx(top1)
    assert written["params_m"] == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6)
    log = (tmp_path / "imagenet-resnet18-simam-param0.1" / "log.txt").read_text().splitlines()
    assert log[-1] == f"----------- Acc@1 {top1:.3f} Acc@5 {top5:.3f} -----------"


def test_official_format_checkpoint_evaluates_like_its_weights(trained, four_class_data, tmp_path, capsys):
    """A file as the release wrote it: DataParallel keys ('module.'), best_acc tensor, SGD state."""
    weights = torch.load(trained[1] / "model_best.pth.tar", weights_only=True)["state_dict"]
    model = networks.create_net("resnet18", "simam", 0.1, num_classes=4)
    model.load_state_dict(weights)
    optimizer = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9, weight_decay=1e-4)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()  # gives the SGD state momentum buffers, as in a real file
    model.load_state_dict(weights)
    official = tmp_path / "model_best_in_100_epochs.pth.tar"
    torch.save({"epoch": 100, "arch": "resnet18", "best_acc": torch.tensor(71.31),
                "state_dict": {f"module.{k}": v for k, v in weights.items()},
                "optimizer": optimizer.state_dict()}, official)
    # the paper's evaluation command: no --attention_type; SimAM is recognised from the keys
    assert main_imagenet.cli([str(four_class_data), "-j", "0", "-a", "resnet18", "-e", "--resume", str(official),
                              "--ckpt", str(tmp_path), *TINY]) == 0
    out = capsys.readouterr().out
    top1, top5, _ = direct_accuracy(model, four_class_data / "val")
    assert f"----------- Acc@1 {top1:.3f} Acc@5 {top5:.3f} -----------" in out
    written = json.loads((tmp_path / "imagenet-resnet18-simam-param0.1"
                          / "eval_model_best_in_100_epochs.json").read_text())
    assert written["epoch"] == 100 and written["top1"] == pytest.approx(top1)


def test_bare_state_dict_and_save_weights(trained, four_class_data, tmp_path):
    exported = tmp_path / "weights.pth"
    run_main(train_argv(four_class_data, tmp_path, "--resume", str(trained[1] / "model_best.pth.tar"),
                        "--save_weights", exported))
    saved = torch.load(exported, weights_only=True)
    assert set(saved) == {"state_dict"} and not any(k.startswith("module.") for k in saved["state_dict"])
    torch.save(saved["state_dict"], tmp_path / "bare.pth")
    result = run_main([str(four_class_data), "-j", "0", "-e", "--resume", str(tmp_path / "bare.pth"),
                       "--ckpt", str(tmp_path), *TINY])
    assert result["attention_type"] == "simam"
    model = networks.create_net("resnet18", "simam", num_classes=4)
    model.load_state_dict(saved["state_dict"])
    assert result["top1"] == pytest.approx(direct_accuracy(model, four_class_data / "val")[0])


def same_training_state(a, b):
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for index, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][index]["momentum_buffer"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]


def test_resume_after_an_epoch_is_bitwise_exact(four_class_data, tmp_path):
    straight = run_main(train_argv(four_class_data, tmp_path / "a", epochs=2))
    run_main(train_argv(four_class_data, tmp_path / "b", epochs=1))
    # resumed with more data-loading workers: augmentation is seeded per sample, so this changes nothing
    resumed = run_main(train_argv(four_class_data, tmp_path / "b", "--resume",
                                  tmp_path / "b" / "imagenet-resnet18-simam-param0.1-seed0", epochs=2, workers=2))
    name = "imagenet-resnet18-simam-param0.1-seed0/checkpoint.pth.tar"
    a = torch.load(tmp_path / "a" / name, weights_only=True)
    b = torch.load(tmp_path / "b" / name, weights_only=True)
    same_training_state(a, b)
    assert resumed["val_top1"] == straight["val_top1"] and resumed["train_loss"] == straight["train_loss"]
    lines = (tmp_path / "b" / "imagenet-resnet18-simam-param0.1-seed0" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]


def sigterm_mid_epoch_then_resume(data, tmp_path) -> tuple[dict, dict]:
    """Two epochs on ``data`` stopped by SIGTERM at epoch 0's third iteration (checked: a clean stop and a partial
    checkpoint), resumed with ``--resume FILE``; and the same two epochs uninterrupted. Returns the two final
    checkpoints (resumed, uninterrupted)."""
    argv = train_argv(data, tmp_path / "stopped", "-p", "1", epochs=2)
    process = subprocess.Popen([sys.executable, "main_imagenet.py", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith("Epoch: [0][ 2/"):
            process.send_signal(signal.SIGTERM)
            break
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0 and "Traceback" not in err, err[-2000:]
    assert "=> stopped by SIGTERM at epoch 0, iteration" in out
    run_dir = tmp_path / "stopped" / "imagenet-resnet18-simam-param0.1-seed0"
    partial = torch.load(run_dir / "checkpoint.pth.tar", weights_only=True)
    assert partial["epoch"] == 0 and 3 <= partial["iteration"] < 10
    run_main(train_argv(data, tmp_path / "stopped", "--resume", run_dir / "checkpoint.pth.tar", epochs=2))
    run_main(train_argv(data, tmp_path / "straight", epochs=2))
    return (torch.load(run_dir / "checkpoint.pth.tar", weights_only=True),
            torch.load(tmp_path / "straight" / run_dir.name / "checkpoint.pth.tar", weights_only=True))


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_and_resumes_exactly(four_class_data, tmp_path):
    same_training_state(*sigterm_mid_epoch_then_resume(four_class_data, tmp_path))


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_dummy_data_with_amp_and_channels_last(tmp_path, amp):
    result = run_main(["--dummy", "32", "-a", "mobilenet_v2", "--attention_type", "simam", "--epochs", "1", "-b", "16",
                       "-j", "0", "--ckpt", str(tmp_path), "--amp", amp, "--channels-last", *TINY])
    assert result["images_per_s"] > 0 and 0.0 <= result["val_top1"] <= 100.0
    saved = torch.load(tmp_path / "imagenet-mobilenet_v2-simam-param0.1" / "checkpoint.pth.tar", weights_only=True)
    assert ("scale" in saved["scaler"]) == (amp == "fp16")  # fp16 trains with a gradient scaler, saved for resume


def test_release_flags_keep_their_names_and_meanings():
    args = main_imagenet.get_args_parser().parse_args(
        ["DATA", "--gpu", "0,1,2,3", "--epochs", "150", "-j", "20", "-a", "mobilenet_v2", "--attention_type", "simam",
         "--attention_param", "0.1", "--lr", ".05", "--cos_lr", "--wd", "4e-5", "-p", "20", "--log_freq", "100",
         "--start-epoch", "2", "-b", "512", "--momentum", "0.8", "--world-size", "2", "--rank", "1",
         "--dist-url", "tcp://h:1", "--dist-backend", "nccl", "--multiprocessing-distributed", "--ckpt", "out/",
         "--seed", "3", "--save_weights", "w.pth", "-e", "--resume", "x.pth"])
    assert (args.data, args.gpu, args.epochs, args.workers, args.arch, args.lr, args.weight_decay) == \
        ("DATA", "0,1,2,3", 150, 20, "mobilenet_v2", 0.05, 4e-5)
    assert (args.print_freq, args.log_freq, args.start_epoch, args.batch_size, args.momentum) == (20, 100, 2, 512, 0.8)
    assert (args.world_size, args.rank, args.dist_url, args.dist_backend, args.ckpt, args.seed) == \
        (2, 1, "tcp://h:1", "nccl", "out/", 3)
    assert args.cos_lr and args.multiprocessing_distributed and args.evaluate and args.resume == "x.pth"
    defaults = main_imagenet.get_args_parser().parse_args(["DATA"])
    assert (defaults.epochs, defaults.batch_size, defaults.lr, defaults.weight_decay, defaults.workers) == \
        (90, 256, 0.1, 1e-4, 4)
    assert defaults.attention_param is None  # the module's default (0.1 for SimAM), not the release's 4
