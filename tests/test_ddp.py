"""DDP on CPU with gloo: torchrun with 2 processes, and the per-GPU spawn path with 2 CPU processes."""

import json
import os
import subprocess
import sys

import pytest
import torch

import main_imagenet
from helpers import TINY, spawn_on_two_cpus, train_argv
from scripts.make_sample_data import make_dataset
from training.config import parse_with_config

pytestmark = pytest.mark.slow  # real processes, killed or distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def odd_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("odd")
    make_dataset(str(root), classes=3, train_per_class=16, val_per_class=7, size=40, seed=2)  # 21 val images
    return root


def torchrun(*argv, nproc=2):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "main_imagenet.py", *map(str, argv)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


def single_process_eval(checkpoint, data, tmp_path):
    args = parse_with_config(main_imagenet.get_args_parser(),
                             [str(data), "-j", "0", "-e", "--resume", str(checkpoint),
                              "--ckpt", str(tmp_path / "single"), *TINY])
    return main_imagenet.main(args)


def test_torchrun_two_processes_train_and_evaluate_like_one(odd_data, tmp_path):
    trained = torchrun(*train_argv(odd_data, tmp_path, epochs=2, batch=8))
    assert trained.returncode == 0, trained.stderr[-3000:]
    run_dir = tmp_path / "imagenet-resnet18-simam-param0.1-seed0"
    assert trained.stdout.count("----------- Acc@1") == 2  # only rank 0 prints
    checkpoint = torch.load(run_dir / "checkpoint.pth.tar", weights_only=True)
    assert checkpoint["epoch"] == 2 and checkpoint["iterations_per_epoch"] == 6  # 48 images, 4 per process

    evaluated = torchrun(str(odd_data), "-j", "0", "-e", "--resume", run_dir / "checkpoint.pth.tar", "--ckpt", tmp_path,
                         "--eval-json", tmp_path / "ddp.json", *TINY)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp.json").read_text())
    single = single_process_eval(run_dir / "checkpoint.pth.tar", odd_data, tmp_path)
    assert ddp["n_images"] == single["n_images"] == 21
    assert (ddp["top1"], ddp["top5"]) == (single["top1"], single["top5"])
    assert ddp["loss"] == pytest.approx(single["loss"], rel=1e-5)


def test_spawn_one_process_per_device_evaluates_like_one(odd_data, tmp_path):
    """The --gpu 0,1 path (one spawned process per device), here with two CPU devices."""
    model_dir = tmp_path / "model"
    main_imagenet.main(parse_with_config(main_imagenet.get_args_parser(), train_argv(odd_data, model_dir, epochs=1)))
    checkpoint = model_dir / "imagenet-resnet18-simam-param0.1-seed0" / "checkpoint.pth.tar"
    args = parse_with_config(main_imagenet.get_args_parser(),
                             [str(odd_data), "-j", "0", "-e", "--resume", str(checkpoint), "--ckpt", str(tmp_path),
                              "--eval-json", str(tmp_path / "spawned.json"), *TINY])
    spawn_on_two_cpus(args)
    spawned = json.loads((tmp_path / "spawned.json").read_text())
    single = single_process_eval(checkpoint, odd_data, tmp_path)
    assert spawned["n_images"] == 21 and (spawned["top1"], spawned["top5"]) == (single["top1"], single["top5"])


def test_spawned_batch_that_does_not_split_is_a_one_line_error(odd_data, tmp_path, capfd):
    args = parse_with_config(main_imagenet.get_args_parser(), train_argv(odd_data, tmp_path, batch=15))
    with pytest.raises(SystemExit) as exit_info:
        spawn_on_two_cpus(args)
    assert exit_info.value.code == 2
    err = capfd.readouterr().err
    assert "error: -b 15 does not split evenly over 2 processes" in err and "Traceback" not in err
