"""The memory-efficient SimAM (custom backward, eager and compiled kernels) against the paper's formula."""

import warnings

import pytest
import torch
from torch import nn

import networks
from networks import create_net, simam, simam_fused
from networks.attentions import simam_kernels as fused_module

COMPILED = pytest.param("compiled", marks=pytest.mark.skipif(
    not fused_module.compiled_available(torch.device("cpu")), reason="torch.compile needs a C++ compiler on CPU"))
SHAPES = [((4, 8, 7, 9), False), ((4, 8, 7, 9), True), ((2, 3, 1, 1), False), ((3, 5, 1, 6), False)]


def formula_and_grad(x, grad, lam):
    """The paper's formula with plain autograd, on a copy of x."""
    x = x.detach().requires_grad_(True)
    y = simam(x, lam)
    return y, torch.autograd.grad(y, x, grad)[0]


@pytest.mark.parametrize("implementation", ["eager", COMPILED])
@pytest.mark.parametrize("shape,channels_last", SHAPES)
def test_fp32_output_and_gradient_match_the_formula(implementation, shape, channels_last):
    x = torch.randn(shape) * 3 + 1
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    grad = torch.randn(shape)
    expected, expected_grad = formula_and_grad(x, grad, 0.1)
    x.requires_grad_(True)
    y = simam_fused(x, 0.1, implementation)
    (x_grad,) = torch.autograd.grad(y, x, grad)
    assert (y - expected).abs().max() <= 1e-5
    assert (x_grad - expected_grad).abs().max() <= 1e-4 * expected_grad.abs().max()
    assert y.is_contiguous(memory_format=torch.channels_last) == (channels_last or shape[2:] == (1, 1))


def test_custom_backward_passes_gradcheck():
    for shape in [(2, 3, 4, 5), (2, 3, 1, 1), (1, 2, 1, 3)]:
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: simam_fused(t, 0.3, "eager"), (x,))


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 3e-3), (torch.bfloat16, 2e-2)])
def test_low_precision_uses_fp32_statistics(dtype, tol):
    x = (torch.randn(2, 4, 56, 56) * 60).to(dtype)  # the channel sums overflow fp16
    grad = torch.randn(x.shape).to(dtype)
    expected, expected_grad = formula_and_grad(x.double(), grad.double(), 0.1)
    x.requires_grad_(True)
    y = simam_fused(x, 0.1, "eager")
    (x_grad,) = torch.autograd.grad(y, x, grad)
    assert y.dtype == dtype and x_grad.dtype == dtype
    torch.testing.assert_close(y.double(), expected, rtol=tol, atol=tol)
    scale = expected_grad.abs().max()
    assert (x_grad.double() - expected_grad).abs().max() <= 4 * tol * scale


def saved_storages(fn, *inputs):
    """{storage pointer: bytes} of what autograd keeps for backward while ``fn`` runs."""
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = fn(*inputs)
    return storages, out


def test_only_the_input_and_per_channel_statistics_are_saved():
    x = torch.randn(4, 8, 14, 14).requires_grad_(True)
    fused, _ = saved_storages(lambda t: simam_fused(t, 0.1, "eager"), x)
    assert fused.pop(x.untyped_storage().data_ptr()) == x.nbytes
    assert sorted(fused.values()) == [4 * 8 * 4, 4 * 8 * 4]  # mean and k, fp32 (N, C, 1, 1)
    reference, _ = saved_storages(lambda t: simam(t, 0.1), x)
    assert sum(reference.values()) >= 4 * x.nbytes  # the formula keeps x, x - mean, its square, the gate


def test_network_keeps_one_extra_tensor_per_simam():
    """Over the network without attention, ResNet-18 with the SimAM modules run one by one (not fused with the BN
    after them) keeps exactly the SimAM outputs (the following BN's input) plus the statistics: the SimAM input
    is the conv output BN kept anyway. tests/test_simam_bn.py: fused, the SimAM outputs are not kept."""
    x = torch.randn(2, 3, 64, 64)
    plain = create_net("resnet18", "none", num_classes=10)
    with_simam = create_net("resnet18", "simam", num_classes=10, fuse_simam_bn=False)
    with_simam.load_state_dict(plain.state_dict(), strict=False)
    outputs = []
    hooks = [m.register_forward_hook(lambda m, i, o: outputs.append(o.nbytes + 2 * 4 * o.shape[0] * o.shape[1]))
             for m in with_simam.modules() if isinstance(m, networks.SimAM)]
    base, _ = saved_storages(plain, x)
    fused, _ = saved_storages(with_simam, x)
    for hook in hooks:
        hook.remove()
    assert len(outputs) == 8
    assert sum(fused.values()) - sum(base.values()) == sum(outputs)


def test_h_w_one_gate_is_sigmoid_half():
    x = torch.randn(3, 4, 1, 1, requires_grad=True)
    y = simam_fused(x, 0.1, "eager")
    torch.testing.assert_close(y, x * torch.sigmoid(torch.tensor(0.5)))
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, torch.sigmoid(torch.tensor(0.5)).item()))


def test_auto_falls_back_to_eager_when_compilation_fails(monkeypatch):
    def broken(function):
        def fail(*args):
            raise RuntimeError("no compiler")
        return fail

    monkeypatch.setattr(fused_module, "_compiled", broken)
    monkeypatch.setattr(fused_module, "compiled_available", lambda device: "cpu" not in fused_module._compile_failed)
    monkeypatch.setattr(fused_module, "_compile_failed", set())
    x = torch.randn(2, 3, 5, 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = simam_fused(x, 0.1, "auto")
    torch.testing.assert_close(y, simam(x, 0.1), rtol=1e-6, atol=1e-6)
    assert any("plain PyTorch" in str(w.message) for w in caught)
    assert fused_module._compile_failed == {"cpu"}


def test_implementation_choice():
    assert networks.get_simam_implementation() == "eager"  # tests/conftest.py
    with pytest.raises(ValueError, match="choose from auto, compiled, eager, reference"):
        networks.set_simam_implementation("fast")
    with pytest.raises(ValueError, match="choose from"):
        simam_fused(torch.randn(1, 1, 2, 2), 0.1, "triton")


@pytest.mark.skipif(not fused_module.compiled_available(torch.device("cpu")),
                    reason="torch.compile needs a C++ compiler")
def test_whole_model_compiled_matches_the_formula(monkeypatch):
    """torch.compile of a network with SimAM: same outputs and gradients as the formula in eager mode."""
    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), networks.SimAM(e_lambda=0.1), nn.BatchNorm2d(8),
                             nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    x = torch.randn(4, 3, 12, 12)
    results = []
    for implementation, compile_model in [("reference", False), ("auto", True)]:
        networks.set_simam_implementation(implementation)
        model = build()
        run = torch.compile(model) if compile_model else model
        try:
            loss = run(x).square().sum()
        finally:
            networks.set_simam_implementation("eager")
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_training_step_matches_the_formula():
    """SimAM's own kernels (the BN after it run separately): at this size a bf16 step is dominated by rounding
    (both differ from the float64 step by ~100%), so only identical BN kernels agree to 5%. The fused SimAM + BN
    step is compared with the fp32 step in tests/test_simam_bn.py."""
    grads = []
    for implementation in ("reference", "eager"):
        networks.set_simam_implementation(implementation)
        try:
            torch.manual_seed(0)
            model = create_net("resnet18", "simam", num_classes=5, fuse_simam_bn=False).to(
                memory_format=torch.channels_last)
            x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(x).float().logsumexp(1).sum()
            loss.backward()
        finally:
            networks.set_simam_implementation("eager")
        grads.append(model.conv1.weight.grad)
    assert torch.isfinite(grads[1]).all()
    assert (grads[1] - grads[0]).norm() <= 0.05 * grads[0].norm()
