"""SimAM and the BatchNorm after it as one fused step, against the unfused pair: the paper's formula (reference
SimAM) followed by torch's nn.BatchNorm2d, with autograd gradients and torch's running statistics."""

import copy
import os
import pickle
import subprocess
import sys

import pytest
import torch
from torch import nn

import networks
from helpers import randomize_bn_statistics
from networks import SimAM, create_net, fuse_simam_batchnorm, fused_pairs, simam_batch_norm
from networks.attentions import simam_kernels

pytestmark = pytest.mark.usefixtures("one_thread")

COMPILED = pytest.param("compiled", marks=pytest.mark.skipif(
    not simam_kernels.compiled_available(torch.device("cpu")), reason="torch.compile needs a C++ compiler on CPU"))
# (shape, channels_last): odd sizes, one neuron per channel (H*W = 1), a single row
SHAPES = [((4, 8, 7, 9), False), ((4, 8, 7, 9), True), ((3, 5, 1, 1), False), ((2, 3, 1, 6), False)]


def pair(channels, lam=0.1, momentum=0.1):
    """The unfused pair: the paper's formula (autograd) and torch's BatchNorm2d with random affine parameters."""
    norm = nn.BatchNorm2d(channels, momentum=momentum)
    randomize_bn_statistics(norm)
    return SimAM(e_lambda=lam, implementation="reference"), norm


def fused_call(attention, norm, x, implementation):
    """``simam_batch_norm`` with ``norm``'s parameters and buffers, counting the batch as BatchNorm2d does."""
    norm.num_batches_tracked.add_(1)
    momentum = 1 / norm.num_batches_tracked.item() if norm.momentum is None else norm.momentum
    return simam_batch_norm(x, attention.e_lambda, implementation, norm.weight, norm.bias, norm.running_mean,
                            norm.running_var, momentum, norm.eps)


def run(fn, x, grad, params):
    x = x.detach().requires_grad_(True)
    out = fn(x)
    grads = torch.autograd.grad(out, [x, *params], grad)
    return out, grads


def relative_error(got, want):
    return ((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("implementation", ["eager", COMPILED])
@pytest.mark.parametrize("shape,channels_last", SHAPES)
def test_fp32_output_gradients_and_running_statistics_equal_the_pair(implementation, shape, channels_last):
    x = torch.randn(shape) * 3 + 1
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    grad = torch.randn(shape)
    attention, norm = pair(shape[1])
    fused_norm = copy.deepcopy(norm)
    want, want_grads = run(lambda t: norm(attention(t)), x, grad, [norm.weight, norm.bias])
    got, got_grads = run(lambda t: fused_call(attention, fused_norm, t, implementation), x, grad,
                         [fused_norm.weight, fused_norm.bias])
    assert got.dtype == want.dtype and got.shape == want.shape
    assert relative_error(got, want) <= 1e-5
    for g, w in zip(got_grads, want_grads):
        assert relative_error(g, w) <= 1e-4
    torch.testing.assert_close(fused_norm.running_mean, norm.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused_norm.running_var, norm.running_var, rtol=1e-5, atol=1e-6)
    assert fused_norm.num_batches_tracked.item() == norm.num_batches_tracked.item() == 1
    if channels_last:
        assert got.is_contiguous(memory_format=torch.channels_last)


def test_gradcheck_float64():
    for shape in [(2, 3, 4, 5), (3, 2, 1, 1), (2, 2, 1, 3)]:
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        weight = torch.rand(shape[1], dtype=torch.float64, requires_grad=True)
        bias = torch.randn(shape[1], dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(
            lambda t, w, b: simam_batch_norm(t, 0.3, "eager", w, b, None, None, 0.1, 1e-5), (x, weight, bias))


def test_cumulative_average_momentum_none_and_several_batches():
    attention, norm = pair(6, momentum=None)
    fused_norm = copy.deepcopy(norm)
    for _ in range(3):
        x = torch.randn(4, 6, 5, 5) * 2
        with torch.no_grad():
            want = norm(attention(x))
            got = fused_call(attention, fused_norm, x, "eager")
        assert relative_error(got, want) <= 1e-5
    for key in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(fused_norm, key), getattr(norm, key), rtol=1e-5, atol=1e-6)
    assert fused_norm.num_batches_tracked.item() == 3


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 4e-3), (torch.bfloat16, 3e-2)])
def test_low_precision_uses_fp32_statistics(dtype, tol):
    """fp16/bf16 activations with fp32 BN parameters (as under autocast): the channel sums overflow fp16, so
    SimAM's and BN's statistics must be fp32; compared with the pair in float64."""
    x = (torch.randn(4, 4, 28, 28) * 60).to(dtype)
    grad = torch.randn(x.shape).to(dtype)
    attention, norm = pair(4)
    norm64 = copy.deepcopy(norm).double()
    want, want_grads = run(lambda t: norm64(attention(t)), x.double(), grad.double(), [norm64.weight, norm64.bias])
    got, got_grads = run(lambda t: fused_call(attention, norm, t, "eager"), x, grad, [norm.weight, norm.bias])
    assert got.dtype == dtype and got_grads[0].dtype == dtype and got_grads[1].dtype == torch.float32
    assert torch.isfinite(got).all() and all(torch.isfinite(g).all() for g in got_grads)
    assert relative_error(got, want) <= tol
    for g, w in zip(got_grads, want_grads):
        assert relative_error(g, w) <= 4 * tol
    torch.testing.assert_close(norm.running_var.double(), norm64.running_var, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.skipif(not simam_kernels.compiled_available(torch.device("cpu")),
                    reason="torch.compile needs a C++ compiler on CPU")
def test_compiled_low_precision_step_rounds_as_the_eager_one(dtype):
    """The compiled kernels keep the step's round trips through fp16/bf16 (the values the unfused pair hands from
    SimAM to BN and back): without them a third of the outputs and input gradients differ by one rounding step."""
    x = (torch.randn(4, 16, 14, 14) * 3 + 1).to(dtype)
    grad = torch.randn(x.shape).to(dtype)
    attention, norm = pair(16)
    (want, want_grads), (got, got_grads) = [
        run(lambda t: fused_call(attention, copy.deepcopy(norm), t, implementation), x, grad, [])
        for implementation in ("eager", "compiled")]
    for name, g, w in (("output", got, want), ("input gradient", got_grads[0], want_grads[0])):
        assert (g != w).double().mean().item() <= 0.01, name


ACTIVATIONS = [((0.0, None), nn.ReLU), ((0.0, 6.0), nn.ReLU6)]


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("bounds", [None, (0.0, None), (0.0, 6.0)])
@pytest.mark.parametrize("shape,channels_last", SHAPES)
def test_one_pass_backward_equals_the_two_pass_backward(dtype, tol, bounds, shape, channels_last):
    """The backward's one-pass arrangement (every sum taken with BN's, for whole-model graphs) gives the gradients
    of the two-pass one, and both those of the pair with autograd."""
    from networks.attentions.simam_functional import simam_batch_norm_backward_math, simam_batch_norm_forward_math

    x = (torch.randn(shape, dtype=dtype) * 3 + 1)
    grad = torch.randn(shape, dtype=dtype)
    if channels_last:
        x, grad = x.to(memory_format=torch.channels_last), grad.to(memory_format=torch.channels_last)
    weight, bias = torch.rand(shape[1], dtype=dtype) * 4 + 0.5, torch.randn(shape[1], dtype=dtype) + 1
    out, mean, k, batch_mean, _, invstd = simam_batch_norm_forward_math(x, weight, bias, 0.1, 1e-5, bounds)
    got = [simam_batch_norm_backward_math(grad, x, weight, mean, k, batch_mean, invstd, out, bounds, one_pass)
           for one_pass in (True, False)]
    for g, w in zip(*got):
        assert relative_error(g, w) <= 10 * tol
    attention, norm = pair(shape[1])
    norm = norm.to(dtype)
    with torch.no_grad():
        norm.weight.copy_(weight)
        norm.bias.copy_(bias)
    activation = {None: nn.Identity(), (0.0, None): nn.ReLU(), (0.0, 6.0): nn.ReLU6()}[bounds]
    want_out, want_grads = run(lambda t: activation(norm(attention(t))), x, grad, [norm.weight, norm.bias])
    assert relative_error(out, want_out) <= tol
    for g, w in zip(got[0], want_grads):
        assert relative_error(g, w) <= 10 * tol


@pytest.mark.parametrize("implementation", ["eager", COMPILED])
@pytest.mark.parametrize("bounds,module", ACTIVATIONS)
def test_relu_or_relu6_joins_the_step_like_the_modules(implementation, bounds, module):
    """``bounds``: the ReLU or ReLU6 after the BN in the same step: output, gradients and running statistics of
    the pair followed by the activation module (inputs clipped on both sides)."""
    x = (torch.randn(4, 8, 7, 9) * 3 + 1).to(memory_format=torch.channels_last)
    grad = torch.randn(x.shape)
    attention, norm = pair(8)
    with torch.no_grad():
        norm.weight.uniform_(2, 6)
        norm.bias.uniform_(0, 4)
    fused_norm = copy.deepcopy(norm)
    activation = module()
    want, want_grads = run(lambda t: activation(norm(attention(t))), x, grad, [norm.weight, norm.bias])
    assert (want == 0).float().mean() > 0.05
    if bounds[1] is not None:
        assert (want == bounds[1]).float().mean() > 0.05
    got, got_grads = run(lambda t: simam_batch_norm(t, attention.e_lambda, implementation, fused_norm.weight,
                                                    fused_norm.bias, fused_norm.running_mean, fused_norm.running_var,
                                                    fused_norm.momentum, fused_norm.eps, bounds),
                         x, grad, [fused_norm.weight, fused_norm.bias])
    assert relative_error(got, want) <= 1e-5 and got.is_contiguous(memory_format=torch.channels_last)
    for g, w in zip(got_grads, want_grads):
        assert relative_error(g, w) <= 1e-4
    torch.testing.assert_close(fused_norm.running_mean, norm.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused_norm.running_var, norm.running_var, rtol=1e-5, atol=1e-6)
    # 'reference' runs the modules' path (SimAM, F.batch_norm, then the activation's function)
    unfused = simam_batch_norm(x, attention.e_lambda, "reference", norm.weight, norm.bias, None, None, 0.1,
                               norm.eps, bounds)
    assert relative_error(unfused, want) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_activation_joins_the_step_like_the_modules(dtype):
    """fp16/bf16 with a ReLU6 in the step: the same values as the pair and the module in the same dtype."""
    x = (torch.randn(4, 4, 14, 14) * 3 + 1).to(dtype)
    grad = torch.randn(x.shape).to(dtype)
    attention, norm = pair(4)
    with torch.no_grad():
        norm.weight.uniform_(2, 6)
    fused_norm = copy.deepcopy(norm)
    want, want_grads = run(lambda t: nn.ReLU6()(fused_call(attention, norm, t, "eager")), x, grad, [])
    got, got_grads = run(lambda t: simam_batch_norm(t, 0.1, "eager", fused_norm.weight, fused_norm.bias,
                                                    fused_norm.running_mean, fused_norm.running_var, 0.1,
                                                    fused_norm.eps, (0.0, 6.0)), x, grad, [])
    assert got.dtype == dtype and torch.equal(got, want)
    assert torch.equal(got_grads[0], want_grads[0])


def test_one_value_per_channel_is_rejected_like_batchnorm():
    attention, norm = pair(3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        fused_call(attention, norm, torch.randn(1, 3, 1, 1), "eager")


def saved_bytes(model, x):
    """Bytes of the unique storages autograd keeps for backward during ``model(x)``, parameters left out."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(x)
    return sum(n for ptr, n in storages.items() if ptr not in weights)


@pytest.mark.parametrize("arch,pairs", [("resnet18", 8), ("mobilenet_v2", 17)])
def test_fused_network_keeps_only_statistics_beyond_the_plain_network(arch, pairs):
    """With the fused pair, SimAM's output is not kept: over the network without attention, only SimAM's two
    (N, C) fp32 statistics per pair remain (the unfused modules keep SimAM's output too)."""
    x = torch.randn(2, 3, 64, 64)
    plain = saved_bytes(create_net(arch, "none", num_classes=10), x)
    model = create_net(arch, "simam", num_classes=10)
    assert fused_pairs(model) == pairs
    channels = []
    hooks = [m.register_forward_hook(lambda m, i, o: channels.append(o.shape[1]))
             for m in model.modules() if isinstance(m, SimAM)]
    with torch.no_grad():
        model.eval()(x)
    for hook in hooks:
        hook.remove()
    statistics = sum(2 * 4 * x.shape[0] * c for c in channels)
    fused = saved_bytes(model.train(), x)
    assert 0 <= fused - plain <= statistics
    unfused = saved_bytes(create_net(arch, "simam", num_classes=10, fuse_simam_bn=False), x)
    assert unfused - plain > 10 * statistics


def train_step(model, x, target):
    loss = nn.functional.cross_entropy(model(x), target)
    loss.backward()
    return loss.detach()


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "mobilenet_v2"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_network_training_step_equals_the_unfused_modules(arch, channels_last):
    """A whole training step in float64 (a random deep network amplifies fp32 rounding; float64 leaves only the
    math): loss, every gradient and every running statistic equal the unfused modules with the paper's formula."""
    torch.manual_seed(0)
    reference = randomize_bn_statistics(create_net(arch, "simam", num_classes=7, simam_impl="reference")).double()
    fused = copy.deepcopy(reference)
    networks.set_simam_implementation("eager", fused)
    assert fused_pairs(reference) == 0 and fused_pairs(fused) > 0  # 'reference' runs the modules one by one
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for model in (reference, fused):
        model.to(memory_format=memory_format).train()
    x = torch.randn(4, 3, 48, 48, dtype=torch.float64).to(memory_format=memory_format)
    target = torch.randint(0, 7, (4,))
    loss_want, loss_got = train_step(reference, x, target), train_step(fused, x, target)
    assert relative_error(loss_got, loss_want) <= 1e-10
    params = dict(fused.named_parameters())
    for name, p in reference.named_parameters():
        torch.testing.assert_close(params[name].grad, p.grad, rtol=1e-7, atol=1e-12, msg=name)
    buffers = dict(fused.named_buffers())
    for name, b in reference.named_buffers():
        torch.testing.assert_close(buffers[name], b, rtol=1e-10, atol=1e-12, msg=name)


def test_autocast_bf16_training_step_is_as_accurate_as_the_unfused_modules():
    """Under bf16 autocast (channels_last) the fused pair is as close to the fp32 step as the unfused modules are."""
    torch.manual_seed(0)
    base = create_net("resnet18", "simam", num_classes=5, fuse_simam_bn=False).to(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 64, 64).to(memory_format=torch.channels_last)

    def step(fuse, autocast):
        model = copy.deepcopy(base)
        fuse_simam_batchnorm(model, enabled=fuse)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(x)
            loss = out.float().logsumexp(1).sum()
        loss.backward()
        return out.detach().float(), model.conv1.weight.grad

    out32, grad32 = step(False, False)
    errors = {}
    for fuse in (False, True):
        out, grad = step(fuse, True)
        assert torch.isfinite(out).all() and torch.isfinite(grad).all()
        errors[fuse] = ((out - out32).norm() / out32.norm(), (grad - grad32).norm() / grad32.norm())
    for fused_error, unfused_error in zip(errors[True], errors[False]):
        assert fused_error <= 1.5 * unfused_error + 1e-3


def test_keys_checkpoints_and_eval_mode_are_unchanged():
    """Fusing changes only the blocks' class: the same keys, strict loading both ways, and in eval mode the modules
    run one by one (bitwise the unfused network's output, forward hooks on SimAM fire)."""
    fused = randomize_bn_statistics(create_net("resnet18", "simam", num_classes=5)).eval()
    unfused = create_net("resnet18", "simam", num_classes=5, fuse_simam_bn=False)
    assert list(fused.state_dict()) == list(unfused.state_dict())
    unfused.load_state_dict(fused.state_dict(), strict=True)
    unfused.eval()
    seen = []
    fused.layer1[0].conv2[1].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fused(x), unfused(x))
    assert len(seen) == 1
    assert isinstance(fused.layer1[0], torch.nn.Module) and isinstance(fused.layer1[0].conv2[1], SimAM)


def test_hooks_on_the_pair_run_it_unfused():
    """A forward hook on SimAM (Grad-CAM, feature capture) sees SimAM's output in training mode too."""
    model = create_net("resnet18", "simam", num_classes=5).train()
    captured = []
    model.layer2[1].conv2[1].register_forward_hook(lambda m, i, o: captured.append((i[0], o)))
    model(torch.randn(2, 3, 32, 32))
    (inputs, output), = captured
    torch.testing.assert_close(output, networks.simam(inputs, 0.1), rtol=1e-5, atol=1e-6)


def test_fuse_and_unfuse_walk_any_model():
    sequential = nn.Sequential(nn.Conv2d(3, 4, 3), SimAM(implementation="eager"), nn.BatchNorm2d(4), nn.ReLU())
    assert fuse_simam_batchnorm(sequential) == 1 and fused_pairs(sequential) == 1
    assert fuse_simam_batchnorm(sequential, enabled=False) == 1 and type(sequential) is nn.Sequential
    without_bn = nn.Sequential(nn.Conv2d(3, 4, 3), SimAM())
    assert fuse_simam_batchnorm(without_bn) == 0
    model = create_net("resnet50", "simam", num_classes=5)
    assert fused_pairs(model) == 16
    assert fuse_simam_batchnorm(model, enabled=False) == 16 and fused_pairs(model) == 0
    assert fused_pairs(create_net("resnet18", "se")) == 0


def test_sync_and_frozen_batchnorm_fall_back_to_the_modules():
    model = create_net("resnet18", "simam", num_classes=5)
    frozen = networks.freeze_batchnorm(copy.deepcopy(model)).train()
    assert torch.isfinite(frozen(torch.randn(2, 3, 32, 32))).all()
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
    assert isinstance(synced.layer1[0].bn2, nn.SyncBatchNorm)  # (runs only in a process group)


def test_pickle_and_deepcopy_keep_the_fused_blocks():
    model = create_net("mobilenet_v2", "simam", num_classes=5, simam_impl="eager")
    for copied in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert fused_pairs(copied) == 17 and networks.get_simam_implementation(copied) == "eager"


def compiled_steps_match(reference: nn.Module, fused: nn.Module, x: torch.Tensor) -> None:
    """Two training steps of ``torch.compile(fused)`` give the loss, gradients and running statistics of the eager
    ``reference`` (the second step runs the compiled graph with updated running statistics)."""
    torch._dynamo.reset()
    compiled = torch.compile(fused)
    for _ in range(2):
        for model in (reference, fused):
            model.zero_grad()
        loss_want = reference(x).square().sum()
        loss_want.backward()
        loss_got = compiled(x).square().sum()
        loss_got.backward()
        torch.testing.assert_close(loss_got, loss_want, rtol=1e-5, atol=1e-5)
        for a, b in zip(reference.parameters(), fused.parameters()):
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5)
    for a, b in zip(reference.buffers(), fused.buffers()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not simam_kernels.compiled_available(torch.device("cpu")),
                    reason="torch.compile needs a C++ compiler")
def test_whole_model_compile_matches_the_unfused_modules():
    """torch.compile of a whole fused network: the same loss, gradients and running statistics as the unfused
    modules in eager mode."""
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), SimAM(implementation="reference"), nn.BatchNorm2d(8),
                              nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    fused = copy.deepcopy(reference)
    networks.set_simam_implementation("auto", fused)
    assert fuse_simam_batchnorm(fused) == 1
    compiled_steps_match(reference, fused, torch.randn(4, 3, 12, 12))


@pytest.mark.skipif(not simam_kernels.compiled_available(torch.device("cpu")),
                    reason="torch.compile needs a C++ compiler")
def test_whole_model_compile_with_relu6_and_channels_last_matches_the_unfused_modules():
    """MobileNetV2's pattern (depthwise conv, SimAM, BN, ReLU6, 1x1 conv) in channels_last under torch.compile, where
    the ReLU6 joins the fused step: the loss, gradients and running statistics of the unfused modules."""
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                              SimAM(implementation="reference"), nn.BatchNorm2d(8), nn.ReLU6(inplace=True),
                              nn.Conv2d(8, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    randomize_bn_statistics(reference)
    reference.to(memory_format=torch.channels_last)
    fused = copy.deepcopy(reference)
    networks.set_simam_implementation("auto", fused)
    assert fuse_simam_batchnorm(fused) == 1
    compiled_steps_match(reference, fused, torch.randn(4, 3, 10, 10).to(memory_format=torch.channels_last))


def test_ddp_single_process_step_equals_the_plain_model(tmp_path):
    """DistributedDataParallel (gloo, world size 1) over the fused network: the gradients of the plain model."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = create_net("resnet18", "simam", num_classes=5)
        plain = copy.deepcopy(model)
        ddp = nn.parallel.DistributedDataParallel(model)
        x, target = torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,))
        train_step(ddp, x, target)
        train_step(plain, x, target)
        for a, b in zip(plain.parameters(), model.parameters()):
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6)
    finally:
        dist.destroy_process_group()


def test_implementation_is_chosen_per_module():
    """Modules keep the implementation they were built with; the process default only applies to new modules;
    ``set_simam_implementation(name, model)`` walks a built model."""
    networks.set_simam_implementation("reference")
    built_before = create_net("resnet18", "simam", num_classes=5)
    networks.set_simam_implementation("eager")
    assert networks.get_simam_implementation(built_before) == "reference"
    assert networks.get_simam_implementation(create_net("resnet18", "simam", num_classes=5)) == "eager"
    model = create_net("mobilenet_v2", "simam", num_classes=5, simam_impl="compiled")
    assert {m.implementation for m in model.modules() if isinstance(m, SimAM)} == {"compiled"}
    assert networks.set_simam_implementation("eager", model) == 17
    assert networks.get_simam_implementation(model) == "eager"
    model.features[2].conv[1][1].implementation = "reference"
    assert networks.get_simam_implementation(model) == "mixed" and fused_pairs(model) == 16
    assert networks.get_simam_implementation(create_net("resnet18", "se")) is None
    for bad in (lambda: create_net("resnet18", "none", simam_impl="fast"), lambda: SimAM(implementation="fast"),
                lambda: networks.set_simam_implementation("fast", model)):
        with pytest.raises(ValueError, match="choose from auto, compiled, eager, reference"):
            bad()


def test_environment_sets_the_default_of_new_modules():
    from helpers import ROOT

    code = ("import networks; m = networks.create_net('resnet18', 'simam', num_classes=2); "
            "print(networks.get_simam_implementation(), networks.get_simam_implementation(m))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SIMAM_IMPL": "reference"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["reference", "reference"]
