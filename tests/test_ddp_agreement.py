"""What the processes of a DDP job must agree on, with two real CPU processes (gloo): which checkpoint to resume
(rank 0 decides from its own view of the filesystem), a stop requested on one process at the end of an epoch, and
the running sums an interval checkpoint saves."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

import main_imagenet
from helpers import ROOT, spawn_on_two_cpus, train_argv
from test_main_imagenet import run_main
from training import distributed, run
from training.checkpoint import LATEST, PREVIOUS
from training.config import parse_with_config
from training.errors import UserError

pytestmark = pytest.mark.slow  # real processes

RUN = "imagenet-resnet18-simam-param0.1-seed0"


def _find_on_rank(rank: int, port: int, ckpts: list[str], data: str, out: str) -> None:
    ctx = distributed.Context(torch.device("cpu"), rank, 2, rank, 2)
    distributed.init_process_group(ctx, None, f"tcp://127.0.0.1:{port}", 1.0)
    args = parse_with_config(main_imagenet.get_args_parser(), train_argv(data, ckpts[rank], "--resume", "auto"))
    try:
        found = run.find_checkpoint(main_imagenet.check_args(args), ctx)
        result = {"path": found.path if found else None, "epoch": found.get("epoch") if found else None}
    except UserError as error:
        result = {"error": str(error)}
    distributed.cleanup()
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


def test_resume_auto_is_decided_by_rank_0_and_read_by_every_process(four_class_data, tmp_path):
    """A node-local --ckpt (or a stale NFS cache): rank 1 sees no checkpoint where rank 0 sees one. Deciding each
    on its own, rank 0 resumed and rank 1 started afresh; rank 0's choice must hold for both."""
    run_main(train_argv(four_class_data, tmp_path / "node0", epochs=1))
    (tmp_path / "node1").mkdir()
    ckpts = [str(tmp_path / "node0"), str(tmp_path / "node1")]
    mp.start_processes(_find_on_rank, args=(distributed.free_port(), ckpts, str(four_class_data), str(tmp_path)),
                       nprocs=2, start_method="spawn")
    found = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    expected = os.path.join(ckpts[0], RUN, LATEST)
    assert found[0] == found[1] == {"path": expected, "epoch": 1}


def test_a_sigterm_on_rank_0_alone_at_the_end_of_an_epoch_stops_every_process(four_class_data, tmp_path):
    """Rank 0 receives the signal while it writes the epoch's checkpoint; the others have finished the epoch. Each
    deciding on its own, rank 0 exited and rank 1 waited in its next collective until the timeout."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               os.path.join("tests", "sigterm_on_epoch_save.py"),
               *train_argv(four_class_data, tmp_path, "--gpu", "cpu", "--dist-timeout", "1", epochs=3)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "=> stopped by SIGTERM after epoch 0; continue with --resume" in done.stdout, done.stdout[-2000:]
    saved = torch.load(tmp_path / RUN / LATEST, weights_only=True)
    assert (saved["epoch"], saved["iteration"]) == (1, 0)
    assert "Epoch: [1]" not in done.stdout


def test_an_interval_checkpoint_saves_the_sums_of_every_process(four_class_data, tmp_path):
    """Two processes of 8 images a step, 10 steps an epoch, a checkpoint every 4 steps: the one at step 8 (kept as
    the previous checkpoint) counts 8 x 16 images, and the epoch resumed from it reports what an uninterrupted
    epoch reports."""
    argv = train_argv(four_class_data, tmp_path / "a", "--checkpoint-every-steps", 4, "-p", 3, epochs=1)
    spawn_on_two_cpus(parse_with_config(main_imagenet.get_args_parser(), argv))
    run_dir = tmp_path / "a" / RUN
    inside = torch.load(run_dir / PREVIOUS, weights_only=True)
    assert (inside["epoch"], inside["iteration"]) == (0, 8)
    loss, top1, top5, count = inside["sums"]
    assert count == 8 * 16 and 0 <= top1 <= top5 <= count and loss > 0
    straight = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])

    resumed_dir = tmp_path / "b" / RUN
    resumed_dir.mkdir(parents=True)
    (resumed_dir / LATEST).write_bytes((run_dir / PREVIOUS).read_bytes())
    argv = train_argv(four_class_data, tmp_path / "b", "--resume", resumed_dir / LATEST, "-p", 3, epochs=1)
    spawn_on_two_cpus(parse_with_config(main_imagenet.get_args_parser(), argv))
    resumed = json.loads((resumed_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert (resumed["train_top1"], resumed["train_top5"]) == (straight["train_top1"], straight["train_top5"])
    assert resumed["train_loss"] == pytest.approx(straight["train_loss"], rel=1e-9)
