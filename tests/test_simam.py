"""SimAM against the paper's Eq. 5-6, computed independently neuron by neuron."""

import math

import pytest
import torch

import release_reference
from networks import SimAM, create_net, simam


def simam_per_neuron(x: torch.Tensor, lam: float) -> torch.Tensor:
    """Eq. 5 for every target neuron t: e_t* = 4 (s2 + lam) / ((t - mu)^2 + 2 s2 + 2 lam), with mu the
    channel mean and s2 = sum (x_i - mu)^2 / (M - 1); Eq. 6: output t * sigmoid(1 / e_t*)."""
    out = torch.empty_like(x)
    n, c, h, w = x.shape
    for b in range(n):
        for ch in range(c):
            values = [x[b, ch, i, j].item() for i in range(h) for j in range(w)]
            mu = sum(values) / len(values)
            s2 = sum((v - mu) ** 2 for v in values) / (len(values) - 1)
            for i in range(h):
                for j in range(w):
                    t = x[b, ch, i, j].item()
                    energy = 4 * (s2 + lam) / ((t - mu) ** 2 + 2 * s2 + 2 * lam)
                    out[b, ch, i, j] = t / (1 + math.exp(-1 / energy))
    return out


@pytest.mark.parametrize("lam", [0.1, 1e-4, 4.0])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 2, 1, 7), (1, 1, 2, 1)])
def test_matches_equation_5_per_neuron(lam, shape):
    x = torch.randn(shape, dtype=torch.float64) * 2 + 0.5
    torch.testing.assert_close(SimAM(e_lambda=lam)(x), simam_per_neuron(x, lam), rtol=1e-12, atol=1e-12)


def test_fp32_equals_the_papers_listing_bitwise():
    x = torch.randn(4, 8, 14, 14)
    assert torch.equal(simam(x, 0.1), release_reference.simam(x, 0.1))


def test_gradcheck_float64():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: simam(t, 0.1), (x,))
    x1 = torch.randn(2, 3, 1, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: simam(t, 0.1), (x1,))


def test_single_neuron_per_channel_is_defined():
    """H*W = 1: no other neuron, so d = v = 0 and the gate is sigmoid(0.5); the release's code gives NaN."""
    x = torch.randn(3, 4, 1, 1)
    torch.testing.assert_close(simam(x, 0.1), x * torch.sigmoid(torch.tensor(0.5)))
    assert torch.isnan(release_reference.simam(x, 0.1)).all()
    x.requires_grad_(True)
    simam(x, 0.1).sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_low_precision_inputs_use_fp32_statistics(dtype, tol):
    # large activations on a 56x56 map: sum(d) is ~1e7, far past fp16's range (65504)
    x = (torch.randn(2, 4, 56, 56) * 60).to(dtype)
    y = simam(x, 0.1)
    assert y.dtype == dtype
    expected = release_reference.simam(x.double(), 0.1)
    torch.testing.assert_close(y.double(), expected, rtol=tol, atol=tol)
    if dtype == torch.float16:  # the same formula evaluated in fp16 overflows
        assert not torch.isfinite(release_reference.simam(x, 0.1)).all()


def test_channels_last_is_preserved():
    x = torch.randn(2, 8, 7, 9).to(memory_format=torch.channels_last)
    y = simam(x, 0.1)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, simam(x.contiguous(), 0.1), rtol=1e-6, atol=1e-7)


def test_autocast_bf16_network_forward():
    model = create_net("resnet18", "simam", num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()


def test_repr_and_validation():
    assert repr(SimAM()) == "SimAM(lambda=0.1)"
    assert repr(SimAM(e_lambda=1e-4)) == "SimAM(lambda=0.0001)"
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="> 0"):
            SimAM(e_lambda=bad)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        simam(torch.randn(3, 4, 5))


def imported_modules(path):
    """The modules a Python file imports (relative ones with their leading dots)."""
    import ast

    with open(path) as f:
        tree = ast.parse(f.read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


def test_the_formula_lives_in_one_dependency_free_file():
    """simam_functional imports only torch; the kernels import it but not the module (no import cycle); the
    module, the package and the visualisation use its functions (one statement of the formula)."""
    import networks
    from networks.attentions import simam_functional, simam_kernels
    from scripts import visualize_attention

    assert imported_modules(simam_functional.__file__) == {"__future__", "torch"}
    kernel_imports = imported_modules(simam_kernels.__file__)
    assert ".simam_functional" in kernel_imports and ".simam" not in kernel_imports
    assert networks.simam is simam_functional.simam and networks.simam_gate is simam_functional.simam_gate
    assert visualize_attention.networks.simam_gate is simam_functional.simam_gate
