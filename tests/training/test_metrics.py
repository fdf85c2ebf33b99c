"""Accuracy counts and running sums against direct computations."""

import pytest
import torch

from training.metrics import RunningSums, averages_of, correct_counts, progress_line


def test_correct_counts_are_topk_hits():
    torch.manual_seed(0)
    output, target = torch.randn(50, 8), torch.randint(0, 8, (50,))
    ranked = output.argsort(dim=1, descending=True)
    top1, top5 = correct_counts(output, target)
    assert top1.item() == (ranked[:, 0] == target).sum().item()
    assert top5.item() == (ranked[:, :5] == target[:, None]).any(1).sum().item()
    assert [c.item() for c in correct_counts(output[:, :3], target.clamp(max=2))] == [
        (output[:, :3].argmax(1) == target.clamp(max=2)).sum().item(), 50]  # top-5 of 3 classes: every sample


def test_running_sums_average_what_they_were_given():
    sums = RunningSums(torch.device("cpu"))
    losses, outputs, targets = [0.5, 2.0], [torch.randn(4, 6), torch.randn(6, 6)], [torch.arange(4), torch.arange(6)]
    for loss, output, target in zip(losses, outputs, targets):
        sums.update(torch.tensor(loss) * len(target), output, target)
    averages = sums.averages()
    assert averages["count"] == 10 and averages["loss"] == pytest.approx((0.5 * 4 + 2.0 * 6) / 10)
    hits = sum((o.argmax(1) == t).sum().item() for o, t in zip(outputs, targets))
    assert averages["top1"] == pytest.approx(10.0 * hits)
    assert averages_of(sums.packed().tolist()) == averages
    resumed = RunningSums(torch.device("cpu"), sums.state())
    assert resumed.averages() == averages


def test_progress_line_is_the_releases():
    line = progress_line("Epoch: [3]", 120, 5005, {"loss": 2.10341, "top1": 51.2, "top5": 76.3}, "Lr 0.1000")
    assert line == "Epoch: [3][ 120/5005]\tLoss 2.1034\tAcc@1  51.20\tAcc@5  76.30\tLr 0.1000"
