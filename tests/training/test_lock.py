"""The run-folder lock: one job at a time, the holder named, stale locks taken over, a job's own lock taken back."""

import errno
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from training.errors import TrainingError, UserError
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


def test_a_job_whose_lock_was_taken_over_stops_refreshing_it_and_may_not_save(tmp_path):
    """A holder frozen past the staleness limit, then taken over, wakes up: its heartbeat must not keep the new
    holder's lock fresh (nor its own claim alive), and its next save is refused, naming the new holder."""
    messages = []
    with RunLock(str(tmp_path), "job-a", report=messages.append, heartbeat_s=0.05) as lock:
        lock.check_held()  # ours: nothing to say
        (tmp_path / LOCK).unlink()  # removed by hand: not a takeover
        time.sleep(0.2)
        lock.check_held()
        write_lock(tmp_path, host="other-node", pid=4242, token="b" * 32)
        old = time.time() - 1000
        os.utime(tmp_path / LOCK, (old, old))
        time.sleep(0.5)  # ten heartbeats
        assert time.time() - os.path.getmtime(tmp_path / LOCK) > 900  # left as the other job wrote it
        assert len(messages) == 1 and "host other-node, pid 4242" in messages[0]
        with pytest.raises(TrainingError, match="taken over by another training job \\(host other-node, pid 4242"):
            lock.check_held()
    assert json.loads((tmp_path / LOCK).read_text())["token"] == "b" * 32  # release leaves it too


def test_a_takeover_between_two_heartbeats_is_seen_at_the_next_save(tmp_path):
    with RunLock(str(tmp_path), "job-a", heartbeat_s=3600) as lock:
        write_lock(tmp_path, host="other-node", pid=4242, token="c" * 32)
        with pytest.raises(TrainingError, match="host other-node"):
            lock.check_held()


def test_job_id_is_torchrun_rendezvous_id_or_the_launcher(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "1234.0")
    assert job_id() == "torchrun:1234.0"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun without --rdzv-id: its agent, our parent
    assert job_id() == f"{socket.gethostname()}:{os.getppid()}"
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    assert job_id() == f"{socket.gethostname()}:{os.getpid()}"


# ---------------------------------------------------------------------------------------------------------
# Shared filesystems: jobs on several nodes racing for one folder, clocks that disagree, Slurm requeues.
# ---------------------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]

# A job in its own process: told through stdin when to take the lock (all at one instant), and when to let go.
CONTESTANT = """
import json, sys, time
from training.errors import UserError
from training.lock import RunLock

lock = None
for line in sys.stdin:
    command, folder, start = json.loads(line)
    if command == "acquire":
        lock = RunLock(folder, sys.argv[1], report=lambda message: None)
        time.sleep(max(0.0, start - time.time()))
        try:
            lock.acquire()
            print("won", flush=True)
        except UserError as error:
            lock = None
            print("refused:", error, flush=True)
    else:
        if lock is not None:
            lock.release()
            lock = None
        print("released", flush=True)
"""


@pytest.fixture(scope="module")
def contestants():
    pool = [subprocess.Popen([sys.executable, "-c", CONTESTANT, f"job-{i}"], cwd=REPO, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE) for i in range(8)]
    yield pool
    for child in pool:
        child.stdin.close()
    for child in pool:
        assert child.wait(timeout=30) == 0


def contest(pool, folder):
    """Every contestant takes ``folder``'s lock at the same instant; their answers, then all let go."""
    start = time.time() + 0.05
    for child in pool:
        child.stdin.write(json.dumps(["acquire", str(folder), start]) + "\n")
        child.stdin.flush()
    answers = [child.stdout.readline().strip() for child in pool]
    for child in pool:
        child.stdin.write(json.dumps(["release", "", 0]) + "\n")
        child.stdin.flush()
    assert [child.stdout.readline().strip() for child in pool] == ["released"] * len(pool)
    return answers


@pytest.fixture
def dead_pid():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid


def lock_file(run_dir):
    return json.loads((Path(run_dir) / LOCK).read_text())


def test_of_jobs_racing_for_a_free_folder_exactly_one_wins(contestants, tmp_path):
    for round in range(12):
        answers = contest(contestants, tmp_path / str(round))
        assert answers.count("won") == 1, answers
        assert all(answer == "won" or answer.startswith("refused:") for answer in answers), answers
        assert os.listdir(tmp_path / str(round)) == []  # released, and nothing left behind


def test_of_jobs_racing_to_take_over_a_stale_lock_exactly_one_wins(contestants, tmp_path, dead_pid):
    for round in range(12):
        token = {"token": uuid.uuid4().hex} if round % 2 else {}  # odd rounds: a lock written by this version
        write_lock(tmp_path / str(round), pid=dead_pid, **token)
        answers = contest(contestants, tmp_path / str(round))
        assert answers.count("won") == 1, answers
        assert all(answer == "won" or answer.startswith("refused:") for answer in answers), answers
        assert os.listdir(tmp_path / str(round)) == []


# Reads the lock as fast as it can until told to stop: how many reads found it incomplete, and how many whole.
READER = """
import json, os, sys
path, stop = sys.argv[1:]
partial = whole = 0
print("ready", flush=True)
while not os.path.exists(stop):
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        continue
    try:
        whole += "job" in json.loads(text)
    except ValueError:
        partial += 1
print(partial, whole, flush=True)
"""


def test_a_reader_never_sees_a_lock_file_half_written(tmp_path):
    reader = subprocess.Popen([sys.executable, "-c", READER, str(tmp_path / LOCK), str(tmp_path / "stop")],
                              text=True, stdout=subprocess.PIPE)
    assert reader.stdout.readline() == "ready\n"
    for i in range(300):
        with RunLock(str(tmp_path), f"job-{i}"):
            pass
    (tmp_path / "stop").touch()
    partial, whole = map(int, reader.communicate(timeout=30)[0].split())
    assert partial == 0 and whole > 0, (partial, whole)


def test_a_takeover_that_finds_another_jobs_lock_in_its_place_is_refused_and_leaves_that_lock(
        tmp_path, monkeypatch, dead_pid):
    write_lock(tmp_path, pid=dead_pid)
    path = str(tmp_path / LOCK)
    # Another job took the stale lock over just before us: on another node, with our pid by chance (containers)
    other = {"job": "job-c", "host": "other-node", "pid": os.getpid(), "started": time.time(),
             "token": uuid.uuid4().hex}
    real_rename, real_replace = os.rename, os.replace
    taken = []

    def another_job_takes_it():
        if not taken:
            taken.append(True)
            with open(path + ".other", "w") as f:
                json.dump(other, f)
            real_replace(path + ".other", path)

    def rename(src, dst, **kwargs):  # the moment our takeover moves the stale lock aside ...
        if os.fspath(src) == path:
            another_job_takes_it()
        return real_rename(src, dst, **kwargs)

    def replace(src, dst, **kwargs):  # ... or writes over it
        real_replace(src, dst, **kwargs)
        if os.fspath(dst) == path:
            another_job_takes_it()

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(UserError, match=r"was just taken by another training job \(host other-node"):
        RunLock(str(tmp_path), "job-b").acquire()
    assert taken and lock_file(tmp_path) == other
    assert os.listdir(tmp_path) == [LOCK]


def test_release_leaves_a_lock_that_another_job_took_over(tmp_path):
    first = RunLock(str(tmp_path), "job-a")
    first.acquire()
    # taken over (first was thought gone) by a job that looks the same: one host name and pid in containers
    write_lock(tmp_path, job="job-b", token=uuid.uuid4().hex)
    first.release()
    assert lock_file(tmp_path)["job"] == "job-b"


@pytest.mark.parametrize("skew", [3600.0, -3600.0])
def test_staleness_is_measured_by_the_filesystems_clock_not_this_hosts(tmp_path, monkeypatch, skew):
    real_time = time.time
    write_lock(tmp_path, host="other-node")
    monkeypatch.setattr(time, "time", lambda: real_time() + skew)  # this host's clock is an hour off
    with pytest.raises(UserError, match=r"is in use by another training job \(host other-node"):
        RunLock(str(tmp_path), "job-b", stale_after_s=60).acquire()
    old = real_time() - 120
    os.utime(tmp_path / LOCK, (old, old))
    messages = []
    with RunLock(str(tmp_path), "job-b", report=messages.append, stale_after_s=60):
        assert lock_file(tmp_path)["job"] == "job-b"
    assert len(messages) == 1 and "last showed signs of life 12" in messages[0]


def test_an_unreadable_lock_is_refused_while_it_may_be_being_written_and_taken_over_when_old(tmp_path):
    (tmp_path / LOCK).write_text("")  # what a writer without hard links shows between create and write
    with pytest.raises(UserError, match="is being locked by another training job at this moment"):
        RunLock(str(tmp_path), "job-b").acquire()
    old = time.time() - 60
    os.utime(tmp_path / LOCK, (old, old))
    messages = []
    with RunLock(str(tmp_path), "job-b", report=messages.append):
        assert lock_file(tmp_path)["job"] == "job-b"
    assert messages == [f"=> taking over the lock of {tmp_path}: the lock file was unreadable"]


@pytest.fixture
def slurm(monkeypatch):
    """Sets this process's Slurm job id and restart count (None: unset, as before a job's first requeue)."""
    def set_run(job, restart):
        monkeypatch.setenv("SLURM_JOB_ID", job)
        if restart is None:
            monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
        else:
            monkeypatch.setenv("SLURM_RESTART_COUNT", restart)
    return set_run


def test_a_requeued_slurm_job_takes_over_the_lock_of_its_previous_run_at_once(tmp_path, slurm):
    slurm("777", None)
    previous = RunLock(str(tmp_path), "torchrun:777.0").holder
    write_lock(tmp_path, **{**previous, "host": "lost-node"})  # its node was lost: the heartbeat is still fresh
    slurm("777", "1")
    messages = []
    with RunLock(str(tmp_path), "torchrun:777.1", report=messages.append):
        assert lock_file(tmp_path)["job"] == "torchrun:777.1"
    assert len(messages) == 1, messages
    assert "host lost-node" in messages[0] and "restart 0 of Slurm job 777, which was requeued" in messages[0]


@pytest.mark.parametrize("job, restart, host", [
    ("778", None, "other-node"),  # another Slurm job
    ("777", "1", "other-node"),  # the same run of this job (a second srun)
    ("777", None, socket.gethostname()),  # the previous run, still alive on this node
])
def test_a_live_holder_from_another_slurm_job_or_the_same_run_is_still_refused(tmp_path, slurm, job, restart, host):
    slurm(job, restart)
    holder = RunLock(str(tmp_path), "a-second-launch").holder  # a job of its own (a job takes its lock back)
    write_lock(tmp_path, **{**holder, "host": host})
    slurm("777", "1")
    with pytest.raises(UserError, match=rf"is in use by another training job \(host {host}"):
        RunLock(str(tmp_path), "torchrun:777.1").acquire()


# Dies (like a killed process) in the middle of a takeover, after claiming the stale lock.
CRASHING_TAKER = """
import os, sys
from training.lock import RunLock

real_rename = os.rename
def rename(src, dst, **kwargs):
    if os.path.basename(src) == "run.lock":
        os._exit(9)
    return real_rename(src, dst, **kwargs)
os.rename = rename
RunLock(sys.argv[1], "job-crashed", report=lambda message: None).acquire()
"""


def test_a_takeover_cut_short_blocks_others_only_for_a_while(tmp_path, dead_pid):
    write_lock(tmp_path, pid=dead_pid)
    assert subprocess.run([sys.executable, "-c", CRASHING_TAKER, str(tmp_path)], cwd=REPO).returncode == 9
    with pytest.raises(UserError, match="is being taken over by another training job at this moment"):
        RunLock(str(tmp_path), "job-b").acquire()
    old = time.time() - 120
    for name in os.listdir(tmp_path):
        os.utime(tmp_path / name, (old, old))
    messages = []
    with RunLock(str(tmp_path), "job-b", report=messages.append):
        assert lock_file(tmp_path)["job"] == "job-b"
    assert len(messages) == 1 and f"pid {dead_pid}" in messages[0] and "is no longer running" in messages[0]
    assert os.listdir(tmp_path) == []


def test_without_hard_links_the_lock_is_created_exclusively(tmp_path, monkeypatch):
    def link(src, dst, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", link)
    with RunLock(str(tmp_path), "job-a") as held:
        assert lock_file(tmp_path)["token"] == held.token
        with pytest.raises(UserError, match="is in use by another training job"):
            RunLock(str(tmp_path), "job-b").acquire()
    assert os.listdir(tmp_path) == []


def test_a_link_reported_failed_after_it_was_made_counts_as_made(tmp_path, monkeypatch):
    real_link = os.link

    def link(src, dst, **kwargs):  # NFS: the reply was lost, the retried request finds the name taken
        real_link(src, dst, **kwargs)
        raise FileExistsError(errno.EEXIST, "File exists")

    monkeypatch.setattr(os, "link", link)
    with RunLock(str(tmp_path), "job-a") as held:
        assert lock_file(tmp_path)["token"] == held.token
    assert os.listdir(tmp_path) == []
