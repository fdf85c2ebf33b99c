"""Paths the first tests never took: continuing a release checkpoint, a resume that changes the memory layout or
the precision, errors raised by another process, repeated SIGTERMs, the release's --multiprocessing-distributed,
NaN steps counted once over processes, and files that are not checkpoints told apart."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

import main_imagenet
import networks
from helpers import TINY, release_sgd_state, train_argv
from scripts.make_sample_data import make_dataset
from test_faults_kill import Training, loadable
from test_main_imagenet import run_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = "imagenet-resnet18-simam-param0.1-seed0"


def test_training_continues_from_a_release_checkpoint(three_class_data, tmp_path):
    torch.manual_seed(0)
    model = networks.create_net("resnet18", "simam", num_classes=3)
    optimizer_state = release_sgd_state(model)
    release = tmp_path / "model_best_in_100_epochs.pth.tar"
    torch.save({"epoch": 1, "arch": "resnet18", "best_acc": 40.0, "optimizer": optimizer_state,
                "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, release)
    result = run_main(train_argv(three_class_data, tmp_path / "runs", "--resume", release, epochs=2))
    saved = loadable(tmp_path / "runs" / RUN / "checkpoint.pth.tar")
    assert saved["epoch"] == 2 and result["best_acc"] >= 40.0
    assert saved["optimizer"]["param_groups"][0]["fused"] is True


def final_weights(run_dir) -> list[torch.Tensor]:
    return list(torch.load(run_dir / "checkpoint.pth.tar", weights_only=True)["state_dict"].values())


def test_resume_with_channels_last_toggled_ends_where_the_plain_resume_ends(three_class_data, tmp_path):
    run_main(train_argv(three_class_data, tmp_path / "first", epochs=1, batch=8))
    ends = {}
    for name, extra in (("plain", ()), ("toggled", ("--channels-last",))):
        run_main(train_argv(three_class_data, tmp_path / name, "--resume",
                            tmp_path / "first" / RUN / "checkpoint.pth.tar", *extra, epochs=2, batch=8))
        ends[name] = final_weights(tmp_path / name / RUN)
    floats = [(a, b) for a, b in zip(ends["plain"], ends["toggled"]) if a.is_floating_point()]
    difference = (torch.cat([(a - b).flatten() for a, b in floats]).norm()
                  / torch.cat([a.flatten() for a, _ in floats]).norm())
    assert difference < 1e-4, difference  # was 73% when the momentum kept the saved layout


def test_a_run_saved_without_a_scaler_resumes_under_fp16(three_class_data, tmp_path):
    run_main(train_argv(three_class_data, tmp_path, "--amp", "bf16", epochs=1))
    assert torch.load(tmp_path / RUN / "checkpoint.pth.tar", weights_only=True)["scaler"] == {}
    run_main(train_argv(three_class_data, tmp_path, "--amp", "fp16", "--resume", "auto", epochs=2))
    saved = torch.load(tmp_path / RUN / "checkpoint.pth.tar", weights_only=True)
    assert saved["epoch"] == 2 and "scale" in saved["scaler"]


def spawn_two_cpu_processes(argv):
    """``main_imagenet.spawn`` (the --gpu 0,1 path) with two CPU devices, in a subprocess; returns its result."""
    script = ("import sys, torch, main_imagenet; from training.config import parse_with_config; "
              "args = parse_with_config(main_imagenet.get_args_parser(), sys.argv[1:]); "
              "main_imagenet.spawn([torch.device('cpu'), torch.device('cpu')], main_imagenet.check_args(args), "
              "f'tcp://127.0.0.1:{main_imagenet.distributed.free_port()}')")
    return ("-c", script), list(map(str, argv))


@pytest.mark.slow
def test_an_error_in_another_process_is_printed_once(three_class_data, tmp_path):
    """A corrupt image in process 1's share of the validation set (every other image from the second on)."""
    val_dir = three_class_data.parent / "corrupt_val"
    if not val_dir.exists():
        make_dataset(str(val_dir), classes=3, train_per_class=4, val_per_class=4, size=40, seed=6)
    first_class = sorted(os.listdir(val_dir / "val"))[0]
    second_image = val_dir / "val" / first_class / sorted(os.listdir(val_dir / "val" / first_class))[1]
    second_image.write_bytes(b"not a jpeg")
    launcher, argv = spawn_two_cpu_processes([val_dir, "-j", "0", "-e", "--ckpt", tmp_path, *TINY])
    code, _, err = Training(argv, launcher=launcher).finish(timeout=180)
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 1 and f"cannot read image {second_image}" in lines[0], err[-2000:]
    assert "Traceback" not in err


@pytest.mark.slow
def test_two_sigterms_are_one_request_and_the_checkpoint_is_saved(three_class_data, tmp_path):
    run = Training(train_argv(three_class_data, tmp_path, "-p", "1", epochs=2, batch=4))
    run.wait_for(r"Epoch: \[0\]\[ 3/12\]")
    run.process.send_signal(signal.SIGTERM)
    run.process.send_signal(signal.SIGTERM)
    code, out, err = run.finish(timeout=60)
    assert code == 0 and "=> stopped by SIGTERM at epoch 0" in out, err[-2000:]
    assert loadable(tmp_path / RUN / "checkpoint.pth.tar")["iteration"] >= 4


@pytest.mark.slow
def test_sigterm_to_the_process_group_of_a_spawned_job_saves(three_class_data, tmp_path):
    """``kill -- -PGID`` (Slurm, systemd): every process gets the signal, and the parent passes its own on."""
    launcher, argv = spawn_two_cpu_processes(train_argv(three_class_data, tmp_path, "-p", "1", epochs=2, batch=4))
    run = Training(argv, launcher=launcher)
    run.wait_for(r"Epoch: \[0\]\[ 3/12\]")
    os.killpg(run.process.pid, signal.SIGTERM)
    code, out, err = run.finish(timeout=90)
    assert code == 0 and "=> stopped by SIGTERM at epoch 0" in out, err[-2000:]
    assert loadable(tmp_path / RUN / "checkpoint.pth.tar")["iteration"] >= 4


def test_multiprocessing_distributed_without_cuda_is_a_one_line_error(capsys, three_class_data, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("the one-line error is for machines without CUDA")
    code = main_imagenet.cli(train_argv(three_class_data, tmp_path, "--multiprocessing-distributed"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["error: --multiprocessing-distributed starts one process per GPU and this machine "
                                 "has no CUDA GPU; omit it to train on the CPU"]


NAN_AT_STEP_1 = """
import sys
from torch import nn
sys.path.insert(0, {root!r})
original, calls = nn.CrossEntropyLoss.forward, [0]
def forward(self, output, target):
    loss = original(self, output, target)
    if self.reduction == "mean":
        calls[0] += 1
        if calls[0] == 2:
            return loss * float("nan")
    return loss
nn.CrossEntropyLoss.forward = forward
import main_imagenet
sys.exit(main_imagenet.cli())
"""


@pytest.mark.slow
def test_a_nan_step_seen_by_every_process_counts_once(three_class_data, tmp_path):
    script = tmp_path / "nan_at_step_1.py"
    script.write_text(NAN_AT_STEP_1.format(root=ROOT))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
               *map(str, train_argv(three_class_data, tmp_path, "--max-bad-steps", "1", epochs=1, batch=8))]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / RUN / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["nonfinite_steps"] == 1


@pytest.mark.parametrize("content,expected", [
    (b"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title>",
     "not a checkpoint: it is an HTML page: the download saved a web page instead of the file"),
    (b"hello\n", "not a checkpoint: it is a text file (it starts with 'hello')"),
    (b"", "not a checkpoint: the file is empty"),
])
def test_files_that_are_not_torch_files_are_named_for_what_they_are(three_class_data, tmp_path, capsys, content,
                                                                    expected):
    path = tmp_path / "model_best.pth.tar"
    path.write_bytes(content)
    code = main_imagenet.cli([str(three_class_data), "-e", "--resume", str(path), "--ckpt", str(tmp_path), *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expected in err[0] and "run code" not in err[0], err


def test_a_truncated_checkpoint_is_called_damaged(three_class_data, tmp_path, capsys):
    path = tmp_path / "model_best.pth.tar"
    torch.save({"state_dict": networks.create_net("resnet18", num_classes=3).state_dict()}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    code = main_imagenet.cli([str(three_class_data), "-e", "--resume", str(path), "--ckpt", str(tmp_path), *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"error: {path}: not a checkpoint: truncated or damaged (the end of the zip archive "
                                 "is missing); download or copy it again"]


