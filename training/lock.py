"""One training job per run folder: a lock file made create-exclusive, kept fresh by a heartbeat.

The lock is ``<run folder>/run.lock``, a small JSON file naming its holder (job, host, pid, start time). It works
on shared filesystems: taking it relies only on ``O_CREAT | O_EXCL`` and the heartbeat is the file's modification
time, rewritten every ``HEARTBEAT_S`` seconds by a background thread. A lock is stale, and is taken over with a
message, when its holder is dead on this host or its heartbeat is older than ``STALE_AFTER_S``. A lock held by the
same job (the processes of one DDP job, or torchrun's restarted workers, share a job id) is simply taken back.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import threading
import time
from datetime import datetime
from typing import Any

from .errors import UserError

LOCK = "run.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0  # ten missed heartbeats: a holder on another host that stopped, or a frozen filesystem


def job_id() -> str:
    """The identity of a training job, the same in all its processes on a host and across torchrun's restarts:
    torchrun's rendezvous id when it has one (``--rdzv-id``), else the launching process on this host (torchrun's
    agent, or the command that spawned one process per GPU, or the process itself)."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    if run_id and run_id != "none":
        return f"torchrun:{run_id}"
    launched = "TORCHELASTIC_RUN_ID" in os.environ or multiprocessing.parent_process() is not None
    return f"{socket.gethostname()}:{os.getppid() if launched else os.getpid()}"


def describe(holder: dict[str, Any]) -> str:
    started = holder.get("started")
    when = datetime.fromtimestamp(started).strftime("%Y-%m-%d %H:%M:%S") if isinstance(started, float) else "?"
    return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, started {when}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class RunLock:
    """Hold ``run_dir``'s lock for ``job`` while in the ``with`` block; a live holder of another job is a
    ``UserError`` naming it. ``report`` receives the take-over messages."""

    def __init__(self, run_dir: str, job: str, report=print, heartbeat_s: float = HEARTBEAT_S,
                 stale_after_s: float = STALE_AFTER_S) -> None:
        self.run_dir, self.path = run_dir, os.path.join(run_dir, LOCK)
        self.job, self.report = job, report
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self.holder = {"job": job, "host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        os.makedirs(self.run_dir, exist_ok=True)
        if not self._create():
            current = self._read()
            reason = self._takeover_reason(current)
            if reason is None:
                raise UserError(f"{self.run_dir} is in use by another training job ({describe(current)}); "
                                f"wait for it to end, or remove {self.path} if that job is gone")
            if reason:
                self.report(f"=> taking over the lock of {self.run_dir}: {reason}")
            self._write_replace()
            if self._read().get("pid") != self.holder["pid"]:  # another job took it over at the same moment
                raise UserError(f"{self.run_dir} was just taken by another training job "
                                f"({describe(self._read())})")
        self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        held = self._read()
        if (held.get("host"), held.get("pid")) == (self.holder["host"], self.holder["pid"]):
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self.holder, f)
        return True

    def _write_replace(self) -> None:
        tmp = f"{self.path}.{self.holder['host']}.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(self.holder, f)
        os.replace(tmp, self.path)

    def _read(self) -> dict[str, Any]:
        try:
            with open(self.path) as f:
                holder = json.load(f)
            holder["heartbeat"] = os.path.getmtime(self.path)
            return holder if isinstance(holder, dict) else {}
        except (OSError, ValueError):
            return {}

    def _takeover_reason(self, current: dict[str, Any]) -> str | None:
        """'' to take the lock back silently (our own job), a message for a stale lock, None when it is held."""
        if not current:
            return "the lock file was unreadable"
        if current.get("job") == self.job:
            return ""
        if current.get("host") == self.holder["host"] and not _pid_alive(int(current.get("pid", -1))):
            return f"its holder ({describe(current)}) is no longer running"
        age = time.time() - current["heartbeat"]
        if age > self.stale_after_s:
            return f"its holder ({describe(current)}) last showed signs of life {age:.0f} s ago"
        return None

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:  # a removed lock: the next job's problem, not a reason to stop training
                pass
