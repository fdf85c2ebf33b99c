"""The learning-rate schedules against torch's own schedulers and their closed forms."""

import pytest
import torch

import main_imagenet
from training import schedule


def release_cosine_lrs(base_lr, epochs):
    """The release's cosine: CosineAnnealingLR(T_max=epochs) stepped once before each epoch."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], base_lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    lrs = []
    for _ in range(epochs):
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def lrs_per_iteration(epochs, iters, **options):
    args = main_imagenet.get_args_parser().parse_args(["--epochs", str(epochs), "--lr", "0.05",
                                                       *options.get("flags", [])])
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], args.lr)
    scheduler = schedule.build_scheduler(optimizer, args, iters)
    lrs = []
    for _ in range(epochs * iters):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_cosine_is_the_release_schedule():
    lrs = lrs_per_iteration(12, 3, flags=["--cos_lr"])
    expected = release_cosine_lrs(0.05, 12)
    for epoch in range(12):
        assert lrs[epoch * 3: epoch * 3 + 3] == pytest.approx([expected[epoch]] * 3, abs=1e-12)


def test_step_schedule_divides_by_ten_every_30_epochs():
    lrs = lrs_per_iteration(95, 1)
    assert lrs[0] == lrs[29] == pytest.approx(0.05)
    assert lrs[30] == lrs[59] == pytest.approx(0.005)
    assert lrs[60] == pytest.approx(0.0005) and lrs[90] == pytest.approx(0.00005)


def test_warmup_is_linear_per_iteration_then_the_schedule():
    lrs = lrs_per_iteration(40, 4, flags=["--warmup-epochs", "2"])
    assert lrs[:8] == pytest.approx([0.05 * (i + 1) / 8 for i in range(8)])
    assert lrs[8] == pytest.approx(0.05) and lrs[30 * 4] == pytest.approx(0.005)
