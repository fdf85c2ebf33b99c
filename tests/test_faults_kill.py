"""Real processes, really killed: SIGKILL mid-iteration, mid-validation and mid-save, SIGTERM/SIGINT, a damaged
checkpoint on --resume auto, and a dead DDP process. What must survive: the last good checkpoints, whole and
loadable, and a run that continues from them."""

import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from helpers import train_argv
from test_main_imagenet import same_training_state
from training.checkpoint import BEST, LATEST, PREVIOUS

pytestmark = pytest.mark.slow  # real processes, killed or distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = "imagenet-resnet18-simam-param0.1-seed0"


class Training:
    """``python main_imagenet.py ARGV`` in the background, its stdout lines queued as they come."""

    def __init__(self, argv, launcher=("main_imagenet.py",)):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen([sys.executable, *launcher, *map(str, argv)], cwd=ROOT, env=env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            self.seen.append(line)
            if re.search(pattern, line):
                return line
        self.kill()
        raise AssertionError(f"no line matching {pattern!r}; output so far:\n{''.join(self.seen[-20:])}")

    def finish(self, timeout: float = 180) -> tuple[int, str, str]:
        try:
            err = self.process.stderr.read() if self.process.wait(timeout=timeout) is not None else ""
        finally:
            self.kill()
        rest = []
        while not self.lines.empty():
            line = self.lines.get()
            if line is not None:
                rest.append(line)
        return self.process.returncode, "".join(self.seen + rest), err

    def kill(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def loadable(path):
    checkpoint = torch.load(path, weights_only=True)
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())
    return checkpoint


def argv(four_class_data, ckpt, *extra, epochs=3):
    return train_argv(four_class_data, ckpt, "-p", "1", *extra, epochs=epochs)


def resume_to_the_end(four_class_data, ckpt, epochs=3):
    code, out, err = Training(argv(four_class_data, ckpt, "--resume", "auto", epochs=epochs)).finish()
    assert code == 0, err[-2000:]
    assert loadable(ckpt / RUN / LATEST)["epoch"] == epochs
    return out


def test_sigkill_mid_iteration_loses_only_the_current_epoch_and_resumes_exactly(four_class_data, tmp_path):
    run = Training(argv(four_class_data, tmp_path / "killed"))
    run.wait_for(r"Epoch: \[1\]\[ 3/10\]")
    run.kill()
    run_dir = tmp_path / "killed" / RUN
    assert loadable(run_dir / LATEST)["epoch"] == 1 and loadable(run_dir / BEST)["epoch"] == 1
    out = resume_to_the_end(four_class_data, tmp_path / "killed")
    assert f"=> resumed from {run_dir / LATEST} at epoch 1" in out
    code, _, err = Training(argv(four_class_data, tmp_path / "straight")).finish()
    assert code == 0, err[-2000:]
    same_training_state(torch.load(run_dir / LATEST, weights_only=True),
                        torch.load(tmp_path / "straight" / RUN / LATEST, weights_only=True))


def test_sigkill_mid_validation(four_class_data, tmp_path):
    # larger validation crops: validation takes long enough to be killed inside
    run = Training(argv(four_class_data, tmp_path, "--val-resize-size", "146", "--val-crop-size", "128"))
    run.wait_for(r"Epoch: \[1\]\[ 9/10\]")  # the last step of epoch 1: validation follows
    time.sleep(0.3)
    run.kill()
    _, out, _ = run.finish()
    assert out.count("----------- Acc@1") == 1, "epoch 1's validation had already finished"
    run_dir = tmp_path / RUN
    assert loadable(run_dir / LATEST)["epoch"] == 1 and loadable(run_dir / BEST)["epoch"] == 1
    resume_to_the_end(four_class_data, tmp_path)


def test_sigkill_mid_save_leaves_whole_files(four_class_data, tmp_path):
    run = Training(argv(four_class_data, tmp_path, "-a", "resnet50"))
    run_dir = tmp_path / "imagenet-resnet50-simam-param0.1-seed0"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and run.process.poll() is None:
        # a checkpoint's partial file (the run lock's own short-lived temporary file is no save)
        if run_dir.is_dir() and any(".pth.tar.tmp" in name for name in os.listdir(run_dir)):
            os.killpg(run.process.pid, signal.SIGKILL)
            break
        time.sleep(0.001)
    run.kill()
    names = os.listdir(run_dir)
    assert any(".pth.tar.tmp" in name for name in names), "the process was not killed while saving"
    for name in names:
        if name.endswith(".pth.tar"):
            loadable(run_dir / name)  # the old version or the new one, whole
    code, out, err = Training(argv(four_class_data, tmp_path, "-a", "resnet50", "--resume", "auto", epochs=1)).finish()
    assert code == 0, err[-2000:]
    assert not any(".tmp" in name for name in os.listdir(run_dir))  # the partial file was cleared


def test_resume_auto_skips_a_truncated_checkpoint(four_class_data, tmp_path):
    code, _, err = Training(argv(four_class_data, tmp_path, epochs=2)).finish()
    assert code == 0, err
    run_dir = tmp_path / RUN
    assert loadable(run_dir / PREVIOUS)["epoch"] == 1
    latest = run_dir / LATEST
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    out = resume_to_the_end(four_class_data, tmp_path, epochs=3)
    assert f"=> skipping {latest}: " in out
    best_epoch = torch.load(run_dir / BEST, weights_only=True)["epoch"]
    assert re.search(rf"=> resumed from {re.escape(str(run_dir))}/(checkpoint.prev|model_best).pth.tar "
                     r"at epoch [12]", out)
    assert best_epoch >= 1
    for name in (LATEST, PREVIOUS, BEST):  # every candidate damaged: refused, nothing overwritten
        (run_dir / name).write_bytes(b"damaged")
    code, _, err = Training(argv(four_class_data, tmp_path, "--resume", "auto", epochs=4)).finish()
    assert code == 2 and err.strip().splitlines()[-1].startswith(f"error: no readable checkpoint in {run_dir}")
    assert (run_dir / LATEST).read_bytes() == b"damaged"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_save_within_seconds_and_exit_cleanly(four_class_data, tmp_path, signum):
    run = Training(argv(four_class_data, tmp_path))
    run.wait_for(r"Epoch: \[0\]\[ 3/10\]")
    sent = time.monotonic()
    run.process.send_signal(signum)
    code, out, err = run.finish(timeout=20)
    assert code == 0 and time.monotonic() - sent < 20, err[-2000:]
    assert f"=> stopped by {signal.Signals(signum).name} at epoch 0" in out and "Traceback" not in err
    saved = loadable(tmp_path / RUN / LATEST)
    assert saved["epoch"] == 0 and saved["iteration"] > 3
    code, _, err = Training(argv(four_class_data, tmp_path, "--resume", tmp_path / RUN, epochs=1)).finish()
    assert code == 0, err[-2000:]


def test_ddp_with_a_killed_process_ends_instead_of_hanging(four_class_data, tmp_path):
    launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "main_imagenet.py")
    run = Training(argv(four_class_data, tmp_path, "--dist-timeout", "0.5", epochs=20), launcher=launcher)
    run.wait_for(r"Epoch: \[0\]\[ 2/")
    workers = [int(pid) for pid in os.listdir("/proc") if pid.isdigit() and parent_of(pid) == run.process.pid]
    assert len(workers) == 2
    os.kill(max(workers), signal.SIGKILL)
    killed = time.monotonic()
    code, _, err = run.finish(timeout=120)
    assert code != 0 and time.monotonic() - killed < 90
    assert "SIGKILL" in err and "FAILED" in err


def test_spawned_ddp_with_a_killed_process_ends_with_a_clear_error(four_class_data, tmp_path):
    """The --gpu 0,1 path (one spawned process per device), here with two CPU devices."""
    script = ("import sys, torch, main_imagenet; from training.config import parse_with_config; "
              "args = parse_with_config(main_imagenet.get_args_parser(), sys.argv[1:]); "
              "main_imagenet.spawn([torch.device('cpu'), torch.device('cpu')], main_imagenet.check_args(args), "
              "f'tcp://127.0.0.1:{main_imagenet.distributed.free_port()}')")
    run = Training(argv(four_class_data, tmp_path, "--dist-timeout", "0.5", epochs=20), launcher=("-c", script))
    run.wait_for(r"Epoch: \[0\]\[ 2/")
    workers = [int(pid) for pid in os.listdir("/proc") if pid.isdigit() and parent_of(pid) == run.process.pid]
    children = [pid for pid in workers if "multiprocessing" in open(f"/proc/{pid}/cmdline").read()]
    os.kill(max(children), signal.SIGKILL)
    killed = time.monotonic()
    code, _, err = run.finish(timeout=120)
    assert code != 0 and time.monotonic() - killed < 90
    assert re.search(r"error: process \d terminated with signal SIGKILL; "
                     r"the other processes were stopped", err), err[-2000:]


def parent_of(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


def test_repeated_sigkill_at_random_moments_then_resume_auto_finishes(four_class_data, tmp_path):
    """Kill at random moments (seeded), restart with --resume auto each time: every file stays whole and the
    run gets to the end."""
    rng = random.Random(0)
    run_dir = tmp_path / RUN
    for delay in (rng.uniform(2, 8) for _ in range(3)):
        run = Training(argv(four_class_data, tmp_path, "--resume", "auto", epochs=3))
        time.sleep(delay)
        run.kill()
        if run_dir.is_dir():
            for name in os.listdir(run_dir):
                if name.endswith(".pth.tar"):
                    loadable(run_dir / name)
    resume_to_the_end(four_class_data, tmp_path, epochs=3)
