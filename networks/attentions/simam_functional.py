"""SimAM's formula (Yang et al., ICML 2021, Eq. 5-6), stated once, in plain PyTorch and without project imports.

For each channel with M = H*W neurons, n = max(M - 1, 1), t = x - mean and the energy scale
k = 1 / (4 (sum(t^2) / n + lambda)), the gate is ``s = sigmoid(k t^2 + 1/2)`` (``k t^2 + 1/2`` is the
paper's 1 / e_t*) and SimAM's output is ``x * s``. With one neuron per channel (M = 1) t = 0 and the gate is
sigmoid(1/2), the formula's limit (the release's code gives 0/0 = NaN there).

The reference functions (``simam``, ``simam_gate``) are the paper's listing, with autograd. The ``*_math``
functions are the same values with hand-written gradients, for the memory-efficient kernels
(``simam_kernels``): backward recomputes the gate from the input and a few per-channel statistics.
Statistics are fp32 whatever the input dtype (the channel sums overflow fp16 on large maps).
"""

from __future__ import annotations

import torch
from torch import Tensor

LOW_PRECISION = (torch.float16, torch.bfloat16)
SPATIAL = (2, 3)  # SimAM's statistics: per sample and channel
BATCH_SPATIAL = (0, 2, 3)  # BatchNorm's statistics: per channel


def check_4d(x: Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"SimAM expects an (N, C, H, W) tensor, got shape {tuple(x.shape)}")


def widen(x: Tensor) -> Tensor:
    """fp16/bf16 as fp32 (the statistics' precision); other dtypes unchanged."""
    return x.float() if x.dtype in LOW_PRECISION else x


def neuron_counts(x: Tensor) -> tuple[int, int]:
    """``(M, n)``: neurons per channel and the variance's divisor max(M - 1, 1)."""
    m = x.shape[2] * x.shape[3]
    return m, max(m - 1, 1)


# ---------------------------------------------------------------------------------------------------------
# The paper's formula with autograd (the reference the kernels are checked against)
# ---------------------------------------------------------------------------------------------------------

def simam_gate(x: Tensor, e_lambda: float = 0.1) -> Tensor:
    """SimAM's gate ``sigmoid(1 / e_t*)`` for every neuron of an (N, C, H, W) tensor (``simam`` is ``x * gate``),
    as the paper's listing: ``d = (x - mean)^2``, ``v = sum(d) / n``, ``sigmoid(d / (4 (v + lambda)) + 0.5)``."""
    _, n = neuron_counts(x)
    d = (x - x.mean(dim=SPATIAL, keepdim=True)).pow(2)
    e_inv = d / (4 * (d.sum(dim=SPATIAL, keepdim=True) / n + e_lambda)) + 0.5
    return torch.sigmoid(e_inv)


def simam(x: Tensor, e_lambda: float = 0.1) -> Tensor:
    """The paper's formula with plain autograd: ``x * sigmoid(1 / e_t*)`` for every neuron of an (N, C, H, W)
    tensor. fp16/bf16 inputs are computed in fp32 and returned in the input dtype; the memory format (e.g.
    channels_last) is preserved. Bitwise equal to the paper's listing for fp32 inputs with H*W > 1."""
    check_4d(x)
    xf = widen(x)
    return (xf * simam_gate(xf, e_lambda)).to(x.dtype)


# ---------------------------------------------------------------------------------------------------------
# The same values for the kernels: per-channel statistics, gate, and hand-written gradients
# ---------------------------------------------------------------------------------------------------------

def simam_statistics(xf: Tensor, e_lambda: float) -> tuple[Tensor, Tensor]:
    """``(mean, k)`` per sample and channel, shaped (N, C, 1, 1): the channel mean and the energy scale
    k = 1 / (4 (v + lambda)) with v = sum((x - mean)^2) / n. Two passes, as the paper's formula sums: ``var_mean``
    (one pass) rounds differently, and the fused SimAM+BN step would then drift from SimAM followed by SyncBN."""
    _, n = neuron_counts(xf)
    mean = xf.mean(dim=SPATIAL, keepdim=True)
    return mean, 0.25 / ((xf - mean).square().sum(dim=SPATIAL, keepdim=True) / n + e_lambda)


def gate_from_statistics(t: Tensor, k: Tensor) -> Tensor:
    """The gate from ``t = x - mean`` and the energy scale: ``sigmoid(k t^2 + 1/2)``."""
    return t.square().mul_(k).add_(0.5).sigmoid_()


def simam_input_grad(grad: Tensor, xf: Tensor, t: Tensor, s: Tensor, k: Tensor) -> Tensor:
    """dL/dx of ``y = x * s`` from dL/dy (all fp32 or all fp64). With u = g x s (1 - s), A = sum(u t) and
    B = sum(u t^2) per channel: ``dL/dx = g s + 2 k (u t - A / M) - (8 k^2 B / n) t``."""
    m, n = neuron_counts(xf)
    grad_x = grad * s
    ut = (1 - s).mul_(grad_x).mul_(xf).mul_(t)  # u t
    a = ut.sum(dim=SPATIAL, keepdim=True)
    b = (ut * t).sum(dim=SPATIAL, keepdim=True)
    grad_x += ut.mul_(2 * k)
    grad_x -= t * (k.square() * b * (8 / n)) + (2 / m) * k * a
    return grad_x


def simam_forward_math(x: Tensor, e_lambda: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(x * s, mean, k)``: SimAM's output in x's dtype and the statistics its backward needs."""
    xf = widen(x)
    mean, k = simam_statistics(xf, e_lambda)
    return gate_from_statistics(xf - mean, k).mul_(xf).to(x.dtype), mean, k


def simam_backward_math(grad: Tensor, x: Tensor, mean: Tensor, k: Tensor) -> Tensor:
    """dL/dx from dL/dy, the saved input and the statistics of ``simam_forward_math``."""
    xf = widen(x)
    t = xf - mean
    return simam_input_grad(widen(grad), xf, t, gate_from_statistics(t, k), k).to(x.dtype)


def _channel(v: Tensor, like: Tensor) -> Tensor:
    """A per-channel vector (BN's weight or bias) shaped (1, C, 1, 1) in the statistics' dtype."""
    return v.to(like.dtype).view(1, -1, 1, 1)


def _rounded_like(y: Tensor, x: Tensor) -> Tensor:
    """``y`` rounded to x's dtype where x is fp16/bf16, kept in the statistics' dtype: the values the unfused pair
    hands from SimAM to BN (and from BN's backward to SimAM's), so that the fused step rounds as it does."""
    return y.to(x.dtype).to(y.dtype) if x.dtype in LOW_PRECISION else y


def clamp_bounds(output: Tensor, bounds: tuple[float, float | None]) -> Tensor:
    """The ReLU (``bounds`` = (0, None)) or ReLU6 ((0, 6)) after BN, as the values ``F.threshold`` or
    ``F.hardtanh`` give."""
    return output.clamp_(*bounds)


def clamp_grad(grad: Tensor, output: Tensor, bounds: tuple[float, float | None]) -> Tensor:
    """The gradient through ``clamp_bounds`` from its output: it passes where low < output < high (the clamped
    output equals the input there and is a bound elsewhere), as ``threshold_backward``/``hardtanh_backward``."""
    low, high = bounds
    passes = output > low
    if high is not None:
        passes &= output < high
    return torch.where(passes, grad, 0)


def simam_batch_norm_forward_math(x: Tensor, weight: Tensor, bias: Tensor, e_lambda: float, eps: float,
                                  bounds: tuple[float, float | None] | None = None
                                  ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """SimAM followed by a training-mode BatchNorm (batch statistics, affine ``weight``/``bias``):
    ``(output, mean, k, batch_mean, batch_var, invstd)`` with the output in x's dtype, SimAM's statistics
    (N, C, 1, 1) and BN's (1, C, 1, 1), all fp32 (``batch_var`` is the biased variance). With ``bounds``, the
    output is BN's clamped to them (the ReLU or ReLU6 after the BN, ``clamp_bounds``)."""
    xf = widen(x)
    mean, k = simam_statistics(xf, e_lambda)
    y = _rounded_like(gate_from_statistics(xf - mean, k).mul_(xf), x)
    batch_var, batch_mean = torch.var_mean(y, dim=BATCH_SPATIAL, correction=0, keepdim=True)
    invstd = torch.rsqrt(batch_var + eps)
    scale = invstd * _channel(weight, xf)
    out = y.mul_(scale).add_(_channel(bias, xf) - batch_mean * scale).to(x.dtype)
    if bounds is not None:
        out = clamp_bounds(out, bounds)
    return out, mean, k, batch_mean, batch_var, invstd


def simam_batch_norm_backward_math(grad: Tensor, x: Tensor, weight: Tensor, mean: Tensor, k: Tensor,
                                   batch_mean: Tensor, invstd: Tensor, output: Tensor | None = None,
                                   bounds: tuple[float, float | None] | None = None, one_pass: bool = False
                                   ) -> tuple[Tensor, Tensor, Tensor]:
    """``(dL/dx, dL/dweight, dL/dbias)`` of ``simam_batch_norm_forward_math``, recomputing SimAM's output from
    the saved input and statistics (with ``bounds``, ``output`` is the forward's clamped output: the clamp's
    gradient is read from it, not from a recomputed BN output).

    BN's sums come first, then SimAM's, which need BN's input gradient g_y: two passes of sums. ``one_pass``
    (fp32/fp64; fp16/bf16 inputs ignore it) takes every sum in one pass: g_y = alpha g + beta x_hat + gamma per
    channel, with alpha, beta, gamma known once BN's sums are, so SimAM's sums of ``u t = g_y r``
    (r = x s (1 - s) t) split into sums of ``g r``, ``x_hat r`` and ``r``, all taken with BN's. Six more sums:
    the arrangement for a graph compiled with its neighbours (the step is then one pass of sums and one writing
    dL/dx), not for eager kernels, which store each product. fp16/bf16 round g_y to their dtype before SimAM's
    backward, as the unfused pair does, and that rounding does not split."""
    if bounds is not None:
        grad = clamp_grad(grad, output, bounds)
    xf, gf = widen(x), widen(grad)
    t = xf - mean
    s = gate_from_statistics(t, k)
    x_hat = _rounded_like(xf * s, x).sub_(batch_mean).mul_(invstd)
    count = x.shape[0] * x.shape[2] * x.shape[3]
    alpha = invstd * _channel(weight, xf)
    if one_pass and x.dtype not in LOW_PRECISION:
        r = (1 - s).mul_(s).mul_(xf).mul_(t)
        rt = r * t
        sums = [v.sum(dim=SPATIAL, keepdim=True) for v in
                (gf, gf * x_hat, gf * r, x_hat * r, r, gf * rt, x_hat * rt, rt)]
        grad_bias, grad_weight = (v.sum(dim=0, keepdim=True) for v in sums[:2])
        beta, gamma = alpha * grad_weight / -count, alpha * grad_bias / -count
        a = alpha * sums[2] + beta * sums[3] + gamma * sums[4]
        b = alpha * sums[5] + beta * sums[6] + gamma * sums[7]
        grad_y = x_hat.mul_(beta).add_(gamma).add_(gf * alpha)
        m, n = neuron_counts(x)
        grad_x = (grad_y * s).add_(r.mul_(grad_y).mul_(2 * k)).sub_(t * (k.square() * b * (8 / n)) + (2 / m) * k * a)
    else:
        grad_bias = gf.sum(dim=BATCH_SPATIAL, keepdim=True)
        grad_weight = (gf * x_hat).sum(dim=BATCH_SPATIAL, keepdim=True)
        grad_y = x_hat.mul_(grad_weight / -count).add_(gf).sub_(grad_bias / count).mul_(alpha)
        grad_x = simam_input_grad(_rounded_like(grad_y, x), xf, t, s, k)
    return grad_x.to(x.dtype), grad_weight.view(-1).to(weight.dtype), grad_bias.view(-1).to(weight.dtype)
