"""Faults injected into a training run in this process: NaN losses, failing disks, unreadable images,
damaged checkpoints and manifests. Each protection is checked by what it must keep intact."""

import errno
import hashlib
import json
import os
import re
import subprocess

import pytest
import torch
from torch import nn

import main_imagenet
import training.checkpoint
from helpers import TINY, train_argv
from scripts.make_sample_data import make_dataset
from test_main_imagenet import run_main
from training.checkpoint import BEST, LATEST, PREVIOUS, newest_valid_checkpoint, sha256_of

RUN = "imagenet-resnet18-simam-param0.1-seed0"


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def one_epoch(three_class_data, tmp_path):
    """A run folder after one good epoch, with the digests of its checkpoints."""
    run_main(train_argv(three_class_data, tmp_path, "-p", "2", epochs=1))
    run_dir = tmp_path / RUN
    return run_dir, {name: digest(run_dir / name) for name in (LATEST, BEST)}


def nan_loss_at(monkeypatch, steps: set[int]):
    """Make the training loss (mean reduction) NaN at the given training steps (counted from 0)."""
    original, calls = nn.CrossEntropyLoss.forward, [0]

    def forward(self, output, target):
        loss = original(self, output, target)
        if self.reduction == "mean":
            calls[0] += 1
            if calls[0] - 1 in steps:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(nn.CrossEntropyLoss, "forward", forward)


def test_nan_loss_stops_without_touching_the_last_good_checkpoints(three_class_data, tmp_path, one_epoch, monkeypatch,
                                                                   capsys):
    run_dir, before = one_epoch
    nan_loss_at(monkeypatch, {1})
    code = main_imagenet.cli(train_argv(three_class_data, tmp_path, "-p", "2", "--resume", "auto", epochs=2))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("error: the training loss was NaN/inf in 1 step(s) of epoch 1"), err
    assert {name: digest(run_dir / name) for name in (LATEST, BEST)} == before
    saved = torch.load(run_dir / LATEST, weights_only=True)
    assert saved["epoch"] == 1 and all(torch.isfinite(v).all() for v in saved["state_dict"].values()
                                       if v.is_floating_point())


def test_tolerated_nan_steps_make_no_update_and_are_counted(three_class_data, tmp_path, monkeypatch):
    nan_loss_at(monkeypatch, {1, 2})
    result = run_main(train_argv(three_class_data, tmp_path, "--max-bad-steps", "2", epochs=1))
    saved = torch.load(tmp_path / RUN / LATEST, weights_only=True)
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())
    assert all(torch.isfinite(s["momentum_buffer"]).all() for s in saved["optimizer"]["state"].values())
    record = json.loads((tmp_path / RUN / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["nonfinite_steps"] == 2 and result["val_top1"] >= 0


@pytest.mark.parametrize("code,reason", [(errno.ENOSPC, "No space left on device"),
                                         (errno.EROFS, "Read-only file system")])
def test_failing_save_is_reported_and_keeps_the_previous_checkpoint(three_class_data, tmp_path, one_epoch, monkeypatch,
                                                                     capsys, code, reason):
    run_dir, before = one_epoch

    def no_room(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(code, reason)

    monkeypatch.setattr(training.checkpoint.torch, "save", no_room)
    status = main_imagenet.cli(train_argv(three_class_data, tmp_path, "--resume", "auto", epochs=2))
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1
    assert re.fullmatch(rf"error: cannot write {re.escape(str(run_dir / LATEST))}: {reason} \(\d+ MB free there: disk "
                        rf"full or read-only\?\); the checkpoint that was there is unchanged; make room and continue "
                        rf"with --resume {re.escape(str(run_dir))}", err[0]), err
    assert {name: digest(run_dir / name) for name in (LATEST, BEST)} == before
    assert not [name for name in os.listdir(run_dir) if ".tmp" in name]


@pytest.fixture
def faulty_data(tmp_path):
    """Readable images plus, in train/ and val/, a truncated JPEG, a text file named .JPEG and a dangling link
    (each followed, in ImageFolder's order, by a readable image)."""
    root = tmp_path / "faulty"
    make_dataset(str(root), classes=3, train_per_class=11, val_per_class=4, size=40, seed=4)
    for split in ("train", "val"):
        first, second = root / split / "n00000000", root / split / "n00000001"
        (second / "truncated.JPEG").write_bytes(sorted(second.iterdir())[0].read_bytes()[:300])
        (first / "notes.JPEG").write_text("not an image")
        os.symlink(first / "missing.JPEG", first / "unreadable.JPEG")
    return root


BAD = {"n00000000": ("notes.JPEG", "unreadable.JPEG"), "n00000001": ("truncated.JPEG",)}


@pytest.mark.parametrize("name", ["notes.JPEG", "unreadable.JPEG"])
def test_unreadable_images_stop_the_run_naming_the_file(faulty_data, tmp_path, capsys, name):
    folder = faulty_data / "train" / "n00000000"
    os.remove(faulty_data / "train" / "n00000001" / "truncated.JPEG")
    os.remove(folder / ({"notes.JPEG", "unreadable.JPEG"} - {name}).pop())
    status = main_imagenet.cli(train_argv(faulty_data, tmp_path, epochs=1))
    err = capsys.readouterr().err.strip().splitlines()
    assert (status == 2 and len(err) == 1 and str(folder / name) in err[0]
            and err[0].startswith("error: cannot read image"))


def test_skip_bad_images_counts_and_names_them(faulty_data, tmp_path, capsys):
    result = run_main(train_argv(faulty_data, tmp_path, "--skip-bad-images", epochs=2))
    err = capsys.readouterr().err
    run_dir = tmp_path / RUN
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["bad_images"] for r in records] == [6, 6]  # 3 in train/ and 3 in val/, every epoch
    log = (run_dir / "log.txt").read_text()
    for split in ("train", "val"):
        for folder, names in BAD.items():
            for name in names:
                path = str(faulty_data / split / folder / name)
                assert f"skipped cannot read image {path}" in log and path in err
    assert result["val_top1"] >= 0
    evaluated = run_main([str(faulty_data), "-e", "--resume", str(run_dir / LATEST), "--skip-bad-images", "-j", "0",
                          "--ckpt", str(tmp_path), *TINY])
    assert evaluated["n_images"] == 12 and evaluated["bad_images"] == 3


def write_checkpoint(path, epoch, iteration=0):
    torch.save({"epoch": epoch, "iteration": iteration, "state_dict": {"w": torch.zeros(3)}}, path)


def test_newest_valid_checkpoint_skips_a_truncated_one(tmp_path):
    write_checkpoint(tmp_path / LATEST, 5)
    write_checkpoint(tmp_path / PREVIOUS, 4)
    write_checkpoint(tmp_path / BEST, 3)
    assert newest_valid_checkpoint(str(tmp_path))[0] == str(tmp_path / LATEST)
    data = (tmp_path / LATEST).read_bytes()
    (tmp_path / LATEST).write_bytes(data[: len(data) // 2])
    reports = []
    path, checkpoint = newest_valid_checkpoint(str(tmp_path), report=reports.append)
    assert path == str(tmp_path / PREVIOUS) and checkpoint["epoch"] == 4
    assert len(reports) == 1 and reports[0].startswith(f"=> skipping {tmp_path / LATEST}: ")
    write_checkpoint(tmp_path / BEST, 4, iteration=7)  # a stop inside epoch 4 is further along
    assert newest_valid_checkpoint(str(tmp_path), report=reports.append)[0] == str(tmp_path / BEST)
    for name in (PREVIOUS, BEST):
        (tmp_path / name).write_bytes(b"")
    assert newest_valid_checkpoint(str(tmp_path), report=reports.append) is None


def test_every_save_keeps_the_checkpoint_it_replaces(three_class_data, tmp_path):
    run_main(train_argv(three_class_data, tmp_path, epochs=2))
    latest = torch.load(tmp_path / RUN / LATEST, weights_only=True)
    previous = torch.load(tmp_path / RUN / PREVIOUS, weights_only=True)
    assert (latest["epoch"], previous["epoch"]) == (2, 1)


def test_evaluation_verifies_the_manifests_sha256(three_class_data, tmp_path, one_epoch, capsys):
    run_dir, _ = one_epoch
    folder = tmp_path / "downloads"
    (folder / "r18").mkdir(parents=True)
    checkpoint = folder / "r18" / "model.pth.tar"
    checkpoint.write_bytes((run_dir / BEST).read_bytes())
    manifest = folder / "manifest.csv"
    argv = [str(three_class_data), "-e", "--resume", str(checkpoint), "-j", "0", "--ckpt", str(tmp_path / "eval"),
            *TINY]
    manifest.write_text(f"file,arch,attention_type,attention_param,sha256\n# a comment\n"
                        f"r18/model.pth.tar,resnet18,simam,0.1,{sha256_of(str(checkpoint))}\n")
    assert main_imagenet.cli(argv) == 0
    assert f"=> {checkpoint}: sha256 matches the manifest" in capsys.readouterr().out
    manifest.write_text(f"file,arch,attention_type,attention_param,sha256\n"
                        f"r18/model.pth.tar,resnet18,simam,0.1,{'0' * 64}\n")
    assert main_imagenet.cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not match" in err[0] and str(manifest) in err[0]
    manifest.write_text("file,arch,attention_type,attention_param,sha256\nr18/model.pth.tar,resnet18,simam,0.1,\n")
    assert main_imagenet.cli(argv) == 0  # no digest listed: nothing to verify


def test_a_last_batch_of_one_image_does_not_stop_training(tmp_path):
    """33 images in batches of 16: BatchNorm cannot train on the 33rd alone, so it waits for the next epoch."""
    root = tmp_path / "odd"
    make_dataset(str(root), classes=3, train_per_class=11, val_per_class=2, size=40, seed=5)
    result = run_main(train_argv(root, tmp_path, epochs=1))
    saved = torch.load(tmp_path / RUN / LATEST, weights_only=True)
    assert saved["iterations_per_epoch"] == 2 and result["epoch"] == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 45 MB tmpfs (needs mount rights: root in a container that allows it)."""
    mountpoint = tmp_path / "small_disk"
    mountpoint.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=45m", "tmpfs", str(mountpoint)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip() or done.returncode}")
    yield mountpoint
    subprocess.run(["umount", str(mountpoint)], check=True)


def test_a_full_disk_stops_the_run_and_keeps_the_previous_checkpoint(three_class_data, small_disk, capsys):
    """A real ENOSPC: MobileNetV2 checkpoints (~18 MB) fit twice (latest and best), not a third time."""
    argv = train_argv(three_class_data, small_disk, arch="mobilenet_v2", epochs=3)
    status = main_imagenet.cli(argv)
    err = capsys.readouterr().err.strip().splitlines()
    run_dir = small_disk / "imagenet-mobilenet_v2-simam-param0.1-seed0"
    assert status == 1 and len(err) == 1 and err[0].startswith(f"error: cannot write {run_dir / LATEST}: "), err
    assert "MB free there: disk full or read-only?" in err[0]
    assert torch.load(run_dir / LATEST, weights_only=True)["epoch"] == 1
    assert not [name for name in os.listdir(run_dir) if ".tmp" in name]
