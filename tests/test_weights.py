"""Checkpoint files: the official release's format loads strictly; code-carrying files are refused."""

import os

import pytest
import torch

from networks import create_net, read_state_dict


def test_official_release_checkpoint_loads_strictly(tmp_path):
    source = create_net("resnet18", "simam", num_classes=10)
    optimizer = torch.optim.SGD(source.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    torch.nn.functional.cross_entropy(source(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    path = tmp_path / "model_best_in_100_epochs.pth.tar"
    torch.save({  # the release: saved from a DataParallel-wrapped model
        "epoch": 100, "arch": "resnet18", "best_acc": torch.tensor(71.31),
        "state_dict": {"module." + k: v for k, v in source.state_dict().items()},
        "optimizer": optimizer.state_dict(),
    }, path)

    model = create_net("resnet18", "simam", num_classes=10)
    model.load_state_dict(read_state_dict(path), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), source.eval()(x))


def test_bare_state_dict(tmp_path):
    source = create_net("mobilenet_v2", "se", num_classes=3)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    create_net("mobilenet_v2", "se", num_classes=3).load_state_dict(read_state_dict(tmp_path / "w.pth"), strict=True)


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = str(tmp_path / "payload_ran")
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": create_net("resnet18").state_dict(), "extra": Payload(marker)}, path)
    with pytest.raises(ValueError, match="refused"):
        read_state_dict(path)
    assert not os.path.exists(marker)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a checkpoint"):
        read_state_dict(tmp_path / "notes.txt")
    torch.save({"epoch": 3}, tmp_path / "meta.pth")
    with pytest.raises(ValueError, match="not a checkpoint"):
        read_state_dict(tmp_path / "meta.pth")
