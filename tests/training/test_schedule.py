"""The learning-rate schedules against their closed forms and torch's own schedulers."""

import math

import pytest
import torch

from training import schedule

BASE_LR = 0.05


def lrs_per_iteration(epochs, iters, base_lr=BASE_LR, **options):
    """The lr of each iteration of the run, from a scheduler built with ``options``."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], base_lr)
    scheduler = schedule.build_scheduler(optimizer, iters, epochs=epochs, **options)
    lrs = []
    for _ in range(epochs * iters):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def torch_lrs(make_scheduler, steps, base_lr=BASE_LR, per=1):
    """The lrs of torch's scheduler stepped once every ``per`` iterations, one per iteration."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], base_lr)
    scheduler = make_scheduler(optimizer)
    lrs = []
    for step in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if (step + 1) % per == 0:
            scheduler.step()
    return lrs


def release_cosine_lrs(base_lr, epochs):
    """The release's cosine: CosineAnnealingLR(T_max=epochs) stepped once before each epoch."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], base_lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    lrs = []
    for _ in range(epochs):
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def per_epoch(values, iters):
    return [value for value in values for _ in range(iters)]


def test_release_cosine_is_the_release_schedule():
    lrs = lrs_per_iteration(12, 3, name="release_cosine")
    assert lrs == pytest.approx(per_epoch(release_cosine_lrs(BASE_LR, 12), 3), abs=1e-12)
    # bitwise the release's expression
    assert lrs == per_epoch([BASE_LR * (0.5 * (1.0 + math.cos(math.pi * (e + 1) / 12))) for e in range(12)], 3)


def test_step_is_the_release_default_and_torchs_step_lr():
    lrs = lrs_per_iteration(95, 2)
    assert lrs == per_epoch([BASE_LR * 0.1 ** (e // 30) for e in range(95)], 2)  # bitwise
    assert lrs[0] == lrs[59] == pytest.approx(0.05) and lrs[60] == lrs[119] == pytest.approx(0.005)
    assert lrs[180] == pytest.approx(0.00005)
    expected = torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, 7, gamma=0.5), 40 * 2, per=2)
    assert lrs_per_iteration(40, 2, step_size=7, gamma=0.5) == pytest.approx(expected, rel=1e-12)


def test_multistep_is_its_closed_form_and_torchs():
    milestones = (3, 8, 8, 15)  # a repeated milestone applies gamma twice, as in MultiStepLR
    lrs = lrs_per_iteration(20, 3, name="multistep", milestones=[15, 3, 8, 8], gamma=0.2)
    assert lrs == per_epoch([BASE_LR * 0.2 ** sum(m <= e for m in milestones) for e in range(20)], 3)
    expected = torch_lrs(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, list(milestones), gamma=0.2), 60, per=3)
    assert lrs == pytest.approx(expected, rel=1e-12)


def test_exponential_is_its_closed_form_and_torchs():
    lrs = lrs_per_iteration(25, 2, name="exponential", gamma=0.9)
    assert lrs == per_epoch([BASE_LR * 0.9 ** e for e in range(25)], 2)
    expected = torch_lrs(lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.9), 50, per=2)
    assert lrs == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("lr_min", [0.0, 1e-3])
def test_cosine_is_per_iteration_down_to_lr_min_and_torchs(lr_min):
    epochs, iters = 10, 7
    total = epochs * iters
    lrs = lrs_per_iteration(epochs, iters, name="cosine", lr_min=lr_min)
    closed = [lr_min + (BASE_LR - lr_min) * (1 + math.cos(math.pi * t / total)) / 2 for t in range(total)]
    assert lrs == pytest.approx(closed, rel=1e-14, abs=1e-16)
    expected = torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, total, eta_min=lr_min), total)
    assert lrs == pytest.approx(expected, rel=1e-10)
    assert lrs[0] == BASE_LR and lr_min < lrs[-1] < lr_min + 1e-3 * BASE_LR


@pytest.mark.parametrize("lr_min", [0.0, 0.004])
def test_linear_is_per_iteration_down_to_lr_min_and_with_warmup_ffcvs_triangle(lr_min):
    epochs, iters = 5, 4
    total = epochs * iters
    lrs = lrs_per_iteration(epochs, iters, name="linear", lr_min=lr_min)
    assert lrs == pytest.approx([lr_min + (BASE_LR - lr_min) * (1 - t / total) for t in range(total)], abs=1e-12)
    warm = lrs_per_iteration(epochs, iters, name="linear", warmup_epochs=2)
    peak = 2 * iters
    assert warm == pytest.approx([BASE_LR * (1 - t / total) * (min(t + 1, peak) / peak) for t in range(total)],
                                 abs=1e-12)
    assert max(warm) == warm[peak - 1]


def test_constant():
    assert lrs_per_iteration(4, 3, name="constant") == [BASE_LR] * 12


@pytest.mark.parametrize("name", schedule.SCHEDULES)
def test_warmup_multiplies_any_schedule_linearly_per_iteration(name):
    epochs, iters, warmup = 12, 4, 2.5
    options = {"milestones": [1, 5]} if name == "multistep" else {}
    plain = lrs_per_iteration(epochs, iters, name=name, gamma=0.5, **options)
    warm = lrs_per_iteration(epochs, iters, name=name, gamma=0.5, warmup_epochs=warmup, **options)
    warmup_iters = round(warmup * iters)  # 10
    expected = [lr * (t + 1) / warmup_iters for t, lr in enumerate(plain[:warmup_iters])]
    assert warm[:warmup_iters] == pytest.approx(expected, rel=1e-14)
    assert warm[warmup_iters:] == plain[warmup_iters:]


def test_release_step_with_warmup_unchanged():
    lrs = lrs_per_iteration(40, 4, warmup_epochs=2)
    assert lrs[:8] == [0.05 * (i + 1) / 8 for i in range(8)]
    assert lrs[8] == 0.05 and lrs[30 * 4] == 0.05 * 0.1


def test_every_parameter_group_follows_the_schedule_with_its_own_base_lr():
    groups = [{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in (0.1, 0.4)]
    optimizer = torch.optim.SGD(groups, 0.1)
    scheduler = schedule.build_scheduler(optimizer, 5, epochs=4, name="cosine", lr_min=0.01)
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    cosine = (1 + math.cos(math.pi * 7 / 20)) / 2
    expected = [0.01 + (lr - 0.01) * cosine for lr in (0.1, 0.4)]
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(expected)


def test_a_restored_scheduler_continues_exactly():
    def run(stop_at=None):
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], BASE_LR)
        make = lambda: schedule.build_scheduler(optimizer, 3, epochs=6, name="cosine", warmup_epochs=1, lr_min=1e-4)  # noqa: E731
        scheduler, lrs = make(), []
        for step in range(18):
            if step == stop_at:
                saved = scheduler.state_dict()
                optimizer.param_groups[0]["lr"] = 123.0  # a fresh process: nothing carried over but the state
                scheduler = make()
                scheduler.load_state_dict(saved)
                optimizer.param_groups[0]["lr"] = scheduler.get_last_lr()[0]
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return lrs

    assert run(stop_at=5) == run()


@pytest.mark.parametrize("options, message", [
    ({"name": "triangle"}, "unknown lr schedule 'triangle'"),
    ({"name": "multistep"}, "needs milestones"),
    ({"name": "step", "lr_min": 1e-5}, "lr_min applies to the cosine and linear schedules only"),
    ({"name": "step", "step_size": 0}, "step size"),
    ({"warmup_epochs": -1}, "warmup epochs"),
])
def test_bad_options_are_one_line_value_errors(options, message):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], BASE_LR)
    with pytest.raises(ValueError, match=message) as error:
        schedule.build_scheduler(optimizer, 3, epochs=5, **options)
    assert "\n" not in str(error.value)


def test_schedule_names():
    assert schedule.SCHEDULES == tuple(schedule.SCHEDULE_FACTORS)
    names = {"step", "multistep", "cosine", "release_cosine", "exponential", "linear", "constant"}
    assert names <= set(schedule.SCHEDULES)
