"""Unattended recovery, with real processes really killed: interval checkpoints bound what a SIGKILL loses,
torchrun --max-restarts restarts dead workers that resume by themselves, and a run folder takes one job at a time."""

import os
import re
import signal
import socket

import pytest
import torch

from test_faults_kill import RUN, Training, argv, loadable, parent_of
from test_main_imagenet import same_training_state
from training.checkpoint import LATEST
from training.lock import LOCK

pytestmark = pytest.mark.slow  # real processes, killed or distributed

TORCHRUN = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
            "main_imagenet.py")


def final_state(ckpt):
    return torch.load(ckpt / RUN / LATEST, weights_only=True)


def test_sigkill_loses_at_most_the_interval_and_the_rerun_is_bitwise(four_class_data, tmp_path):
    every = 3
    run = Training(argv(four_class_data, tmp_path / "killed", "--checkpoint-every-steps", every, epochs=1))
    run.wait_for(r"=> saved .* at epoch 0, iteration 6 in \d+\.\d+ s")
    run.kill()
    done = max(int(step) + 1 for step in re.findall(r"Epoch: \[0\]\[\s*(\d+)/10\]", "".join(run.seen)))
    saved = loadable(tmp_path / "killed" / RUN / LATEST)
    assert (saved["epoch"], saved["iteration"]) == (0, 6)
    assert (tmp_path / "killed" / RUN / LOCK).exists()  # left by the killed process

    rerun = Training(argv(four_class_data, tmp_path / "killed", "--checkpoint-every-steps", every, "--resume", "auto",
                          epochs=1))
    code, out, err = rerun.finish()
    assert code == 0, err[-2000:]
    assert re.search(r"=> taking over the lock of .*: its holder \(host .*, pid \d+, started .*\) is no longer "
                     r"running", out), out
    resumed = int(re.search(r"=> resumed from .* at epoch 0, iteration (\d+)", out).group(1))
    assert done - resumed <= every  # the work lost: at most the interval
    assert not (tmp_path / "killed" / RUN / LOCK).exists()

    code, _, err = Training(argv(four_class_data, tmp_path / "straight", epochs=1)).finish()
    assert code == 0, err[-2000:]
    same_training_state(final_state(tmp_path / "killed"), final_state(tmp_path / "straight"))


def test_a_second_job_into_the_same_folder_is_refused_with_the_holder_named(four_class_data, tmp_path):
    first = Training(argv(four_class_data, tmp_path, epochs=20))
    first.wait_for(r"Epoch: \[0\]\[ 1/10\]")
    code, _, err = Training(argv(four_class_data, tmp_path, epochs=20)).finish(timeout=120)
    first.kill()
    assert code == 2, err[-2000:]
    message = err.strip().splitlines()[-1]
    host = socket.gethostname()
    expected = (rf"error: {re.escape(str(tmp_path / RUN))} is in use by another training job \(host "
                rf"{re.escape(host)}, pid (\d+), started \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\); .*")
    assert re.fullmatch(expected, message), message
    holder_pid = int(re.search(r"pid (\d+)", message).group(1))
    assert holder_pid == first.process.pid


def workers_of(agent_pid: int) -> dict[int, int]:
    """torchrun's worker processes, as {rank: pid}."""
    workers = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit() and parent_of(pid) == agent_pid:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
            if b"RANK" in environ:
                workers[int(environ[b"RANK"])] = int(pid)
    return workers


def test_torchrun_restarts_a_killed_worker_and_the_job_resumes_by_itself(four_class_data, tmp_path):
    flags = ("--gpu", "cpu", "--checkpoint-every-steps", 2)
    run = Training(argv(four_class_data, tmp_path / "killed", *flags, epochs=2), launcher=TORCHRUN)
    run.wait_for(r"=> saved .* at epoch 0, iteration 4 in")
    workers = workers_of(run.process.pid)
    assert sorted(workers) == [0, 1]
    os.kill(workers[1], signal.SIGKILL)
    code, out, err = run.finish(timeout=300)
    print(out[-3000:], err[-3000:])  # shown by pytest -s: what torchrun and the workers said
    assert code == 0, err[-3000:]
    assert re.search(r"=> resumed from .*checkpoint.pth.tar at epoch 0, iteration [4-9]", out), out[-3000:]
    assert re.search(r"SIGKILL|Signals.SIGKILL|exitcode: -9", err), err[-3000:]
    saved = final_state(tmp_path / "killed")
    assert (saved["epoch"], saved["iteration"]) == (2, 0)

    code, _, err = Training(argv(four_class_data, tmp_path / "straight", *flags, epochs=2),
                            launcher=TORCHRUN).finish(timeout=300)
    assert code == 0, err[-2000:]
    same_training_state(saved, final_state(tmp_path / "straight"))
