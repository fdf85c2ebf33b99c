"""One training job per run folder: a lock file created whole and exclusively, kept fresh by a heartbeat.

The lock is ``<run folder>/run.lock``, a small JSON file naming its holder (job, host, pid, start time, a random
token, and under Slurm the job id and restart count). It is made for shared filesystems (NFS, Lustre) used from
several nodes:

* it is written whole to a uniquely named file, then hard-linked as ``run.lock`` (a link fails when the name
  exists), so no reader ever sees it half-written; without hard links it is created with ``O_CREAT | O_EXCL``;
* the heartbeat is the file's modification time, rewritten every ``HEARTBEAT_S`` seconds by a background thread.
  Its age is measured against the filesystem's clock (the time of a probe file touched now: the file server's on
  NFS), not against this host's;
* a lock is stale when its holder is dead on this host, when its heartbeat is older than ``STALE_AFTER_S``, or
  when its holder is an earlier run of this Slurm job on another node (the job was requeued, after losing a node
  say). A stale lock is taken over with a message; a lock of the same job (the processes of one DDP job,
  torchrun's restarted workers) is taken back silently;
* a takeover first claims the lock it judged stale by creating ``run.lock.takeover.<that lock's token>.<n>``,
  which only one job can: of the jobs that judge a lock stale at the same moment one takes it over, the others
  are refused. A claim left by a job that died while taking over is passed over after ``CLAIM_STALE_S``;
* a job removes the lock on release only while it still holds its token;
* a job whose lock another job took over (judged stale while this one was frozen, say) stops refreshing it and
  saves nothing more (``check_held``): its checkpoints would overwrite the other job's.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import multiprocessing
import os
import socket
import threading
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .errors import TrainingError, UserError

LOCK = "run.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0  # ten missed heartbeats: a holder on another host that stopped, or a frozen filesystem
CLAIM_STALE_S = 60.0  # a takeover takes milliseconds: a claim this old was left by a job that died taking over
UNREADABLE_GRACE_S = 10.0  # without hard links a lock is visible while it is written: give its writer time
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}  # what link(2) says on such filesystems


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
    """The holder of a lock, for messages: host, pid and start time."""
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


def _slurm_run() -> dict[str, Any]:
    """This process's Slurm job id and restart count (``SLURM_RESTART_COUNT`` is unset before the first requeue);
    {} outside Slurm."""
    job = os.environ.get("SLURM_JOB_ID", "")
    if not job:
        return {}
    try:
        restart = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        restart = 0
    return {"slurm_job": job, "slurm_restart": restart}


@dataclass(frozen=True)
class _Seen:
    """A lock file as read: its holder ({} when unreadable), heartbeat (modification time), identity and bytes."""

    holder: dict[str, Any]
    heartbeat: float
    identity: str  # the holder's token; for a file without one, its content and inode
    raw: bytes


def _create_exclusive(path: str, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return True


class RunLock:
    """Hold ``run_dir``'s lock for ``job`` while in the ``with`` block; a live holder of another job is a
    ``UserError`` naming it. ``report`` receives the take-over messages."""

    def __init__(self, run_dir: str, job: str, report=print, heartbeat_s: float = HEARTBEAT_S,
                 stale_after_s: float = STALE_AFTER_S) -> None:
        self.run_dir, self.path = run_dir, os.path.join(run_dir, LOCK)
        self.job, self.report = job, report
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self.token = uuid.uuid4().hex
        self.holder = {"job": job, "host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                       "token": self.token, **_slurm_run()}
        self._data = json.dumps(self.holder).encode()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.taken_by: dict[str, Any] | None = None  # the holder that took the lock over from this job

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock (taking over a stale one), or raise ``UserError`` naming the live holder."""
        os.makedirs(self.run_dir, exist_ok=True)
        for _ in range(3):
            if self._create(self.path):
                break
            seen = self._read(self.path)
            if seen is not None:
                self._take_over(seen)
                break
            # released between our try and our look: try again
        else:
            raise UserError(f"{self.run_dir} keeps changing hands between training jobs; try again")
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()

    def check_held(self) -> None:
        """Raise ``TrainingError`` when another job has taken the lock over (an absent lock, removed by hand, is not
        a reason to stop)."""
        if self.taken_by is None:
            with suppress(UserError):
                self._note_takeover(self._read(self.path))
        if self.taken_by is not None:
            raise TrainingError(f"{self.run_dir} was taken over by another training job ({describe(self.taken_by)}) "
                                "while this one held it: this job stops without saving, so as not to overwrite that "
                                "job's checkpoints")

    def _note_takeover(self, seen: _Seen | None) -> bool:
        """Whether ``seen`` (the lock as read now) is another job's; the first time, remember and report it."""
        if seen is None or seen.identity == self.token:
            return False
        if self.taken_by is None:
            self.taken_by = seen.holder
            self.report(f"=> warning: {self.path} now names another job ({describe(seen.holder)}): this job no "
                        "longer holds the run folder and will save nothing more")
        return True

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it still holds our token (a job that took it over keeps it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with suppress(OSError, UserError):
            seen = self._read(self.path)
            if seen is not None and seen.holder.get("token") == self.token:
                os.remove(self.path)

    # ------------------------------------------------------------------------------------------------------
    # Taking over

    def _take_over(self, seen: _Seen) -> None:
        reason = self._takeover_reason(seen)
        if reason is None:
            if not seen.holder:
                raise UserError(f"{self.run_dir} is being locked by another training job at this moment "
                                f"({self.path} is not complete yet); try again")
            raise UserError(f"{self.run_dir} is in use by another training job ({describe(seen.holder)}); "
                            f"wait for it to end, or remove {self.path} if that job is gone")
        prefix = f"{LOCK}.takeover.{seen.identity}."
        self._claim(seen, os.path.join(self.run_dir, prefix))
        try:
            self._replace(seen)
        finally:
            for name in os.listdir(self.run_dir):  # ours, and any that jobs which died taking over left
                if name.startswith(prefix) and name[len(prefix):].isdigit():
                    with suppress(FileNotFoundError):
                        os.remove(os.path.join(self.run_dir, name))
        if reason:
            self.report(f"=> taking over the lock of {self.run_dir}: {reason}")

    def _takeover_reason(self, seen: _Seen) -> str | None:
        """'' to take the lock back silently (our own job), a message for a stale lock, None when it is held."""
        holder = seen.holder
        if not holder:
            return "the lock file was unreadable" if self._age(seen.heartbeat) > UNREADABLE_GRACE_S else None
        if holder.get("job") == self.job:
            return ""
        here = holder.get("host") == self.holder["host"]
        pid = holder.get("pid")
        if here and isinstance(pid, int) and pid > 0 and not _pid_alive(pid):
            return f"its holder ({describe(holder)}) is no longer running"
        restart = holder.get("slurm_restart")
        if (not here and "slurm_job" in self.holder and holder.get("slurm_job") == self.holder["slurm_job"]
                and isinstance(restart, int) and restart < self.holder["slurm_restart"]):
            return (f"its holder ({describe(holder)}) is restart {restart} of Slurm job {holder['slurm_job']}, "
                    f"which was requeued (this is restart {self.holder['slurm_restart']})")
        age = self._age(seen.heartbeat)
        if age > self.stale_after_s:
            return f"its holder ({describe(holder)}) last showed signs of life {age:.0f} s ago"
        return None

    def _claim(self, seen: _Seen, prefix: str) -> None:
        """Create the first free ``prefix<n>``: the right to take over the lock ``seen``. Claims are never taken
        away, only passed over when old, so no two jobs can hold the same one."""
        for n in itertools.count():
            if self._create(f"{prefix}{n}"):
                return
            with suppress(FileNotFoundError):
                if self._age(os.stat(f"{prefix}{n}").st_mtime) > CLAIM_STALE_S:
                    continue
            raise self._refusal(seen)  # another job is taking it over, or just did

    def _replace(self, seen: _Seen) -> None:
        """With the claim held: move the stale lock ``seen`` aside, check that it was that one, and create ours."""
        current = self._read(self.path)
        if current is not None:
            if current.identity != seen.identity:
                raise self._refusal(seen)
            aside = f"{self.path}.stale.{self.token}"
            try:
                os.rename(self.path, aside)
            except FileNotFoundError:  # removed since we looked: whoever creates it first holds it
                pass
            else:
                moved = self._read(aside)
                if moved is not None and moved.identity != seen.identity:
                    # Its holder released it (it was not dead after all) and another job locked the folder since
                    # we looked: give that job its lock back. (Should a third job lock the folder in between,
                    # two would hold it: this needs a holder thought dead to come back at this very moment.)
                    self._create(self.path, moved.raw)
                    os.remove(aside)
                    raise self._refusal(seen)
                os.remove(aside)
        if not self._create(self.path):
            raise self._refusal(seen)

    def _refusal(self, stale: _Seen) -> UserError:
        """The error of a job that lost the race for the stale lock ``stale``, naming the winner when known."""
        current = self._read(self.path)
        if current is not None and current.holder and current.identity != stale.identity:
            return UserError(f"{self.run_dir} was just taken by another training job ({describe(current.holder)})")
        return UserError(f"{self.run_dir} is being taken over by another training job at this moment; try again")

    # ------------------------------------------------------------------------------------------------------
    # Files

    def _create(self, path: str, data: bytes | None = None) -> bool:
        """Create ``path`` holding ``data`` (our holder by default) whole and exclusively; False if it exists."""
        data = self._data if data is None else data
        tmp = f"{path}.tmp.{uuid.uuid4().hex}"
        with open(tmp, "xb") as f:
            f.write(data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            # NFS retries a link whose reply was lost, and the retry fails though the first try made it
            return os.stat(tmp).st_nlink == 2
        except OSError as error:
            if error.errno not in _NO_HARD_LINKS:
                raise
            return _create_exclusive(path, data)
        finally:
            with suppress(FileNotFoundError):
                os.remove(tmp)

    def _read(self, path: str) -> _Seen | None:
        """The lock file ``path`` as it is now; None when there is none."""
        try:
            with open(path, "rb") as f:
                raw, stat = f.read(), os.fstat(f.fileno())
        except FileNotFoundError:
            return None
        except OSError as error:
            raise UserError(f"cannot read {path}: {error}") from None
        try:
            holder = json.loads(raw)
        except ValueError:
            holder = None
        holder = holder if isinstance(holder, dict) else {}
        token = holder.get("token")
        if not (isinstance(token, str) and token.isalnum() and len(token) <= 64):  # it also names files
            token = f"h{hashlib.sha1(raw).hexdigest()[:16]}i{stat.st_ino}"
        return _Seen(holder, stat.st_mtime, token, raw)

    def _age(self, mtime: float) -> float:
        """Seconds since ``mtime`` by the filesystem's clock: the time of a file touched now, set the way the
        heartbeat sets the lock's (the server's on NFS). This host's clock, if the probe fails."""
        probe = f"{self.path}.probe.{uuid.uuid4().hex}"
        try:
            with open(probe, "xb"):
                pass
            try:
                os.utime(probe)
                now = os.stat(probe).st_mtime
            finally:
                os.remove(probe)
        except OSError:
            now = time.time()
        return now - mtime

    def _beat(self) -> None:
        """Refresh the lock's time while it is ours; a lock taken over by another job is left to it."""
        while not self._stop.wait(self.heartbeat_s):
            try:
                if self._note_takeover(self._read(self.path)):
                    return
                os.utime(self.path)
            except (OSError, UserError):  # a removed lock: the next job's problem, not a reason to stop training
                pass
