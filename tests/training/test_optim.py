"""The fused SGD against torch's plain SGD: a restored state (the release's, or another layout's) continues exactly,
a step flagged non-finite leaves weights and momentum untouched, nesterov and the weight-decay parameter groups
compute what torch's plain SGD does."""

import copy
import importlib

import pytest
import torch
from torch import nn

import networks
from helpers import release_sgd_state
from training.optim import NonFiniteGuard, build_optimizer, load_optimizer_state, weight_decay_groups


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


@pytest.mark.parametrize("flat", [False, True], ids=["buffers", "flattened"])
@pytest.mark.parametrize("nonfinite", ["loss", "gradients"])
def test_a_skipped_step_leaves_weights_every_buffer_and_momentum_bitwise_unchanged(nonfinite, flat):
    """A network with BatchNorm: the skipped step's forward pass moved the running statistics and the count; the
    guard puts them back, and the next good step continues from there (buffers as they are, or stored in one
    storage as training keeps them: ``flatten_buffers``)."""
    from training.distributed import Context
    from training.engine import StepOptions, train_step
    from training.optim import flatten_buffers
    from training.state import TrainState

    model = networks.create_net("resnet18", "simam", num_classes=3)
    if flat:
        flatten_buffers(model)
    optimizer = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=1e-4)
    state = TrainState(model, optimizer, scheduler=None, scaler=torch.amp.GradScaler("cpu", enabled=False),
                       iterations_per_epoch=3)
    options = StepOptions(Context(torch.device("cpu")))
    guard = NonFiniteGuard(torch.device("cpu"), steps=3, model=model)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    train_step(model, x, y, state, options, guard, 0)
    before = copy.deepcopy(model.state_dict())
    momentum = [optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    if nonfinite == "loss":  # a NaN image: NaN activations, running statistics and loss
        bad = x.clone()
        bad[0, 0, 0, 0] = float("nan")
        train_step(model, bad, y, state, options, guard, 1)
    else:  # a finite forward pass whose gradients overflow
        hook = model.fc.weight.register_hook(lambda grad: grad * float("inf"))
        train_step(model, x, y, state, options, guard, 1)
        hook.remove()
    after = model.state_dict()
    moved = copy.deepcopy(model).train()
    moved(bad if nonfinite == "loss" else x)  # what that forward pass alone does to the statistics
    assert not torch.equal(moved.bn1.running_var, before["bn1.running_var"])
    for key, value in before.items():  # weights, running mean/var and num_batches_tracked of every BN
        assert torch.equal(value, after[key]), key
    assert all(torch.equal(a, optimizer.state[p]["momentum_buffer"]) for a, p in zip(momentum, model.parameters()))
    assert guard.add_counted(1, guard.pending(1).tolist()) == (1 if nonfinite == "loss" else 0)

    # the next good step is the one an uninterrupted model takes from the same state
    reference = copy.deepcopy(model)
    reference_optimizer = build_optimizer(reference, lr=0.1, momentum=0.9, weight_decay=1e-4)
    reference_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # not aliasing the buffers
    train_step(model, x, y, state, options, guard, 2)
    reference_state = TrainState(reference, reference_optimizer, scheduler=None,
                                 scaler=torch.amp.GradScaler("cpu", enabled=False), iterations_per_epoch=3)
    train_step(reference, x, y, reference_state, options)
    for (key, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), key


def test_a_step_marked_by_several_processes_counts_once():
    guard = NonFiniteGuard(torch.device("cpu"), steps=6)
    assert guard.add_counted(2, [2.0, 0.0, 1.0]) == 2  # marks of steps 0-2 summed over processes
    assert guard.pending(5).numel() == 3  # only steps 3-5 are left to count
    assert guard.add_counted(5, [0.0, 0.0, 2.0]) == 3


class NormsAndBiases(nn.Module):
    """Every kind of parameter: convolutions with and without bias, several norms, a shared linear layer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 1), nn.InstanceNorm2d(4, affine=True), nn.ReLU())
        self.ln = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 5)
        self.head = self.fc  # shared: listed once

    def forward(self, x):
        x = self.block(self.gn(self.bn(self.conv(x))))
        return self.head(self.ln(x.mean((2, 3))))


def expected_decays(model, weight_decay, norm_weight_decay, bias_weight_decay):
    """Each parameter's decay by name, classified here independently of training.optim."""
    decays = {}
    for name, parameter in model.named_parameters():
        owner = model.get_submodule(name.rpartition(".")[0])
        if name.endswith(".bias") and bias_weight_decay is not None:
            decays[name] = bias_weight_decay
        elif isinstance(owner, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.LayerNorm)) and \
                norm_weight_decay is not None:
            decays[name] = norm_weight_decay
        else:
            decays[name] = weight_decay
    return decays


def decays_in(optimizer, model):
    """Each parameter's decay in ``optimizer``, by name."""
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    return {name: decay_of[id(p)] for name, p in model.named_parameters()}


def test_default_is_one_fused_group_of_all_parameters_in_order():
    model = NormsAndBiases()
    optimizer = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=1e-4)
    (group,) = optimizer.param_groups
    assert group["params"] == list(model.parameters())
    assert group["weight_decay"] == 1e-4 and group["fused"] and not group["nesterov"]


@pytest.mark.parametrize("norm, bias", [(0.0, None), (None, 0.0), (0.0, 1e-5), (1e-5, 0.0), (3e-5, 5e-5)])
def test_norm_and_bias_parameters_get_their_decay(norm, bias):
    model = NormsAndBiases()
    optimizer = build_optimizer(model, 0.1, 0.9, 1e-4, norm_weight_decay=norm, bias_weight_decay=bias)
    expected = expected_decays(model, 1e-4, norm, bias)
    assert decays_in(optimizer, model) == expected
    assert len(optimizer.param_groups) == len(set(expected.values()))  # equal decays share a group
    assert sorted(id(p) for g in optimizer.param_groups for p in g["params"]) == sorted(map(id, model.parameters()))
    order = {id(p): i for i, p in enumerate(model.parameters())}
    for group in optimizer.param_groups:  # each group in the model's order
        assert [order[id(p)] for p in group["params"]] == sorted(order[id(p)] for p in group["params"])
    assert all(group["fused"] for group in optimizer.param_groups)


def test_groups_of_a_resnet_are_torchvisions():
    """ResNet-18: the BatchNorm weights and biases and the classifier's bias, in torchvision's group order."""
    model = networks.create_net("resnet18", "simam", num_classes=3)
    groups = weight_decay_groups(model, 1e-4, norm_weight_decay=0.0, bias_weight_decay=2e-5)
    names = {id(p): name for name, p in model.named_parameters()}
    assert [g["weight_decay"] for g in groups] == [1e-4, 0.0, 2e-5]  # other, norm, bias
    bn_weights = [name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert [names[id(p)] for p in groups[1]["params"]] == [f"{name}.weight" for name in bn_weights]
    assert [names[id(p)] for p in groups[2]["params"]] == [f"{name}.bias" for name in bn_weights] + ["fc.bias"]


def test_equal_decays_give_the_default_single_group():
    model = NormsAndBiases()
    optimizer = build_optimizer(model, 0.1, 0.9, 1e-4, norm_weight_decay=1e-4, bias_weight_decay=1e-4)
    assert [g["params"] for g in optimizer.param_groups] == [list(model.parameters())]


def test_nesterov_reaches_the_fused_kernel_and_equals_torchs_sgd(monkeypatch):
    torch.manual_seed(0)
    model = NormsAndBiases()
    reference = copy.deepcopy(model)
    optimizer = build_optimizer(model, 0.1, 0.9, 1e-4, nesterov=True, norm_weight_decay=0.0, bias_weight_decay=0.0)
    expected_optimizer = torch.optim.SGD(
        weight_decay_groups(reference, 1e-4, norm_weight_decay=0.0, bias_weight_decay=0.0), 0.1, momentum=0.9,
        weight_decay=1e-4, nesterov=True, foreach=False, fused=False)
    fused_calls = []
    sgd_module = importlib.import_module("torch.optim.sgd")  # the module, which torch.optim's namespace hides
    fused_sgd = sgd_module._fused_sgd

    def recording_fused_sgd(*args, **kwargs):
        fused_calls.append(kwargs["nesterov"])
        return fused_sgd(*args, **kwargs)

    monkeypatch.setattr(sgd_module, "_fused_sgd", recording_fused_sgd)
    for _ in range(3):
        x = torch.randn(2, 3, 8, 8)
        for net, opt in ((model, optimizer), (reference, expected_optimizer)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    assert fused_calls == [True] * 3 * len(optimizer.param_groups)
    worst = max((p - e).abs().max().item() for p, e in zip(model.parameters(), reference.parameters()))
    assert worst < 1e-6


def test_a_grouped_state_continues_exactly_and_a_different_grouping_is_refused():
    torch.manual_seed(0)
    model = NormsAndBiases()
    optimizer = build_optimizer(model, 0.1, 0.9, 1e-4, norm_weight_decay=0.0)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(2, 3, 8, 8)).sum().backward()
        optimizer.step()
    saved = copy.deepcopy(optimizer.state_dict())
    restored = build_optimizer(model, 0.5, 0.5, 1e-3, norm_weight_decay=0.0)
    load_optimizer_state(restored, saved)
    hyper_parameters = [(g["lr"], g["momentum"], g["weight_decay"]) for g in restored.param_groups]
    assert hyper_parameters == [(0.1, 0.9, 1e-4), (0.1, 0.9, 0.0)]
    assert all(torch.equal(optimizer.state[p]["momentum_buffer"], restored.state[p]["momentum_buffer"])
               for p in model.parameters())
    for other in (build_optimizer(model, 0.1, 0.9, 1e-4),
                  build_optimizer(model, 0.1, 0.9, 1e-4, bias_weight_decay=0.0)):  # 1 group; 2 of other sizes
        with pytest.raises(ValueError, match="parameter groups must be those of the run that saved it") as error:
            load_optimizer_state(other, saved)
        assert "\n" not in str(error.value)


@pytest.mark.parametrize("nonfinite", ["image", "gradients"])
def test_an_fp16_step_the_gradient_scaler_skips_leaves_every_buffer_unchanged(nonfinite):
    """Under fp16 the scaler, not the guard, flags the step, and it deletes ``optimizer.found_inf`` right after the
    fused step: the guard must still see the skip and put the BatchNorm statistics back (else they stay NaN)."""
    from training.distributed import Context
    from training.engine import StepOptions, train_step
    from training.state import TrainState

    model = networks.create_net("resnet18", "simam", num_classes=3)
    optimizer = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    state = TrainState(model, optimizer, scheduler=None, scaler=scaler, iterations_per_epoch=3)
    options = StepOptions(Context(torch.device("cpu")), amp_dtype=torch.float16)
    guard = NonFiniteGuard(torch.device("cpu"), steps=3, model=model)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    train_step(model, x, y, state, options, guard, 0)
    before = copy.deepcopy(model.state_dict())
    scale = scaler.get_scale()
    if nonfinite == "image":
        bad = x.clone()
        bad[0, 0, 0, 0] = float("nan")
        train_step(model, bad, y, state, options, guard, 1)
    else:
        hook = model.fc.weight.register_hook(lambda grad: grad * float("inf"))
        train_step(model, x, y, state, options, guard, 1)
        hook.remove()
    assert scaler.get_scale() == scale / 2  # the scaler saw the overflow and skipped the step
    for key, value in before.items():
        assert torch.equal(value, model.state_dict()[key]), key
    assert not hasattr(optimizer, "found_inf")


def test_flattened_buffers_keep_their_values_keys_and_own_version_counters():
    from training.optim import flat_buffers, flatten_buffers

    model = networks.create_net("resnet50", "simam", num_classes=3)
    randomize = {name: torch.randn_like(b) if b.is_floating_point() else torch.randint_like(b, 100)
                 for name, b in model.named_buffers()}
    model.load_state_dict(randomize, strict=False)
    before = copy.deepcopy(model.state_dict())
    assert flat_buffers(list(model.buffers())) is None
    flatten_buffers(model)
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], v) and after[k].dtype == v.dtype
                                               for k, v in before.items())
    flats = flat_buffers(list(model.buffers()))
    assert len(flats) == 1 and flats[0].numel() == sum(b.numel() * b.element_size() for b in model.buffers())
    assert all(b._base is None for b in model.buffers())  # not views: one update leaves the others' versions
    model.train()(torch.randn(2, 3, 32, 32)).sum().backward()  # every BatchNorm updates, none complains


def test_the_guard_adds_a_constant_few_operations_to_a_step_whatever_the_depth():
    """torch.profiler's count of the operations a training step runs, with the guard minus without
    (``scripts/benchmark.py --suite guard``): at most 10 with the buffers flattened, two per buffer otherwise."""
    from scripts.benchmark import get_args_parser, suite_guard

    args = get_args_parser().parse_args(["--suite", "guard", "--device", "cpu"])
    rows = suite_guard(args)["rows"]
    assert [row["arch"] for row in rows] == ["resnet18", "resnet50", "mobilenet_v2"]
    for row in rows:
        assert row["ops_added"] <= 10, row
        assert row["ops_added_per_buffer_guard"] >= 2 * row["buffers"], row
