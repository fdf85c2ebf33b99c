"""The run-folder lock: one job at a time, the holder named, stale locks taken over, a job's own lock taken back."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from training.errors import UserError
from training.lock import LOCK, RunLock, job_id


def write_lock(run_dir, **holder):
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, LOCK), "w") as f:
        json.dump({"job": "other", "host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                   **holder}, f)


def test_a_second_job_is_refused_with_the_holder_named_and_the_lock_is_released(tmp_path):
    first = RunLock(str(tmp_path), "job-a")
    first.acquire()
    holder = json.loads((tmp_path / LOCK).read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    with pytest.raises(UserError, match=rf"is in use by another training job \(host {socket.gethostname()}, "
                                        rf"pid {os.getpid()}, started \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\)"):
        RunLock(str(tmp_path), "job-b").acquire()
    first.release()
    assert not (tmp_path / LOCK).exists()
    with RunLock(str(tmp_path), "job-b"):  # free again
        assert (tmp_path / LOCK).exists()
    assert not (tmp_path / LOCK).exists()


def test_the_same_job_takes_its_lock_back_silently(tmp_path):
    write_lock(tmp_path, job="torchrun:abc", pid=1)
    messages = []
    with RunLock(str(tmp_path), "torchrun:abc", report=messages.append):
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    assert messages == []


def test_a_lock_whose_holder_died_on_this_host_is_taken_over_with_a_message(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_lock(tmp_path, pid=dead.pid)
    messages = []
    with RunLock(str(tmp_path), "job-b", report=messages.append):
        assert json.loads((tmp_path / LOCK).read_text())["job"] == "job-b"
    assert len(messages) == 1 and f"pid {dead.pid}" in messages[0] and "is no longer running" in messages[0]


def test_a_holder_on_another_host_is_refused_while_its_heartbeat_is_fresh_and_taken_over_when_stale(tmp_path):
    write_lock(tmp_path, host="other-node", pid=os.getpid())
    with pytest.raises(UserError, match="host other-node"):
        RunLock(str(tmp_path), "job-b", stale_after_s=60).acquire()
    old = time.time() - 120
    os.utime(tmp_path / LOCK, (old, old))
    messages = []
    with RunLock(str(tmp_path), "job-b", report=messages.append, stale_after_s=60):
        pass
    assert "host other-node" in messages[0] and "last showed signs of life 12" in messages[0]


def test_the_heartbeat_keeps_the_lock_fresh(tmp_path):
    with RunLock(str(tmp_path), "job-a", heartbeat_s=0.05):
        old = time.time() - 1000
        os.utime(tmp_path / LOCK, (old, old))
        time.sleep(0.5)
        assert time.time() - os.path.getmtime(tmp_path / LOCK) < 5


def test_job_id_is_torchrun_rendezvous_id_or_the_launcher(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "1234.0")
    assert job_id() == "torchrun:1234.0"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun without --rdzv-id: its agent, our parent
    assert job_id() == f"{socket.gethostname()}:{os.getppid()}"
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    assert job_id() == f"{socket.gethostname()}:{os.getpid()}"
