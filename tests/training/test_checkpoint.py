"""Checkpoint files: atomic writes, RNG states, the newest readable checkpoint of a run folder."""

import pytest
import torch

from training import checkpoint


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth.tar"
    checkpoint.atomic_save({"epoch": 1}, str(path))

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        checkpoint.atomic_save({"epoch": 2}, str(path))
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth.tar"]  # no temporary file left behind


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    import random

    import numpy as np

    states = checkpoint.capture_rng()
    expected = (random.random(), np.random.rand(), torch.rand(1))
    torch.save({"rng": states}, tmp_path / "rng.pth")
    checkpoint.restore_rng(torch.load(tmp_path / "rng.pth", weights_only=True)["rng"])
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])


def test_each_process_restores_its_own_rng_states():
    from training.checkpoint import rng_of_process

    checkpoint = {"rng": "rank 0", "rng_per_rank": ["rank 0", "rank 1"]}
    assert [rng_of_process(checkpoint, rank, 2) for rank in (0, 1)] == ["rank 0", "rank 1"]
    assert rng_of_process(checkpoint, 2, 4) == "rank 0"  # saved by another number of processes
    assert rng_of_process({"rng": "rank 0"}, 1, 2) == "rank 0"  # written before per-process states


def test_a_save_that_fails_for_another_reason_than_the_disk_is_not_called_a_full_disk(tmp_path, monkeypatch):
    from training.errors import TrainingError

    def refuse(obj, f):
        raise RuntimeError("Cannot save multiple tensors or storages that view the same data as different types")

    monkeypatch.setattr(torch, "save", refuse)
    with pytest.raises(TrainingError) as raised:
        checkpoint.save_checkpoint({"state_dict": {"w": torch.zeros(2)}}, str(tmp_path))
    message = str(raised.value)
    assert message.startswith(f"cannot save {tmp_path / 'checkpoint.pth.tar'}: Cannot save multiple tensors")
    assert "disk full" not in message and not list(tmp_path.iterdir())
