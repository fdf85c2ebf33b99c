"""The fused SGD against torch's plain SGD: a restored state (the release's, or another layout's) continues exactly,
and a step flagged non-finite leaves weights and momentum untouched."""

import copy

import pytest
import torch
from torch import nn

import networks
from helpers import release_sgd_state
from training.optim import NonFiniteGuard, build_optimizer, load_optimizer_state


def reference_step(model: nn.Module, saved: dict, grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """One step of torch's plain single-tensor SGD from ``saved`` (contiguous everything): the expected weights."""
    params = [nn.Parameter(p.detach().contiguous().clone()) for p in model.parameters()]
    optimizer = torch.optim.SGD(params, 0.1, foreach=False)
    optimizer.load_state_dict(copy.deepcopy(saved))  # loading shares the saved tensors
    for param, grad in zip(params, grads):
        param.grad = grad.contiguous().clone()
    optimizer.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_a_release_sgd_state_continues_with_the_fused_step(layout):
    """The release's (non-fused) SGD state, saved contiguous, continued by our fused SGD in either layout: the
    update equals torch's plain SGD from the same state."""
    torch.manual_seed(0)
    model = networks.create_net("resnet18", "simam", num_classes=3)
    saved = release_sgd_state(model)
    model = model.to(memory_format=layout)
    optimizer = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=1e-4)
    load_optimizer_state(optimizer, saved)
    grads = [torch.randn_like(p) for p in model.parameters()]
    expected = reference_step(model, saved, grads)
    for param, grad in zip(model.parameters(), grads):
        param.grad = grad
    optimizer.found_inf = torch.zeros(1)  # the guard's flag: the step a release state used to fail on
    optimizer.step()
    worst = max(((p.detach() - e).abs().max() / e.abs().max()).item() for p, e in zip(model.parameters(), expected))
    assert worst < 1e-6


def test_skipped_step_leaves_weights_and_momentum_untouched():
    """The overflow flag reaches the fused SGD kernel: the step is skipped on the device."""
    from training.distributed import Context
    from training.engine import StepOptions, train_step
    from training.state import TrainState

    model = nn.Linear(3, 2)
    optimizer = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=1e-4)
    state = TrainState(model, optimizer, scheduler=None, scaler=torch.amp.GradScaler("cpu", enabled=False),
                       iterations_per_epoch=2)
    options = StepOptions(Context(torch.device("cpu")))
    guard = NonFiniteGuard(torch.device("cpu"), steps=2)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    train_step(model, x, y, state, options, guard, 0)
    weights = [p.detach().clone() for p in model.parameters()]
    momentum = [optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    train_step(model, x * float("inf"), y, state, options, guard, 1)
    assert guard.add_counted(1, guard.pending(1).tolist()) == 1  # one process: its marks are the sums
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    assert all(torch.equal(a, optimizer.state[p]["momentum_buffer"]) for a, p in zip(momentum, model.parameters()))


def test_a_step_marked_by_several_processes_counts_once():
    guard = NonFiniteGuard(torch.device("cpu"), steps=6)
    assert guard.add_counted(2, [2.0, 0.0, 1.0]) == 2  # marks of steps 0-2 summed over processes
    assert guard.pending(5).numel() == 3  # only steps 3-5 are left to count
    assert guard.add_counted(5, [0.0, 0.0, 2.0]) == 3
