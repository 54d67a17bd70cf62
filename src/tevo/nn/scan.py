"""Associative (parallel) scan for first-order linear recurrences, and its naive reference.

Paper: Parallelizing Linear Recurrent Neural Nets Over Sequence Length (Martin & Cundy, 2018);
Blelloch, "Prefix Sums and Their Applications" (1990); Hillis & Steele (1986).

    h_t = a_t ⊙ h_{t-1} + b_t          (t = 1..n, h_0 given, elementwise / diagonal a_t)

The pairs (a, b) compose associatively:  (a₁, b₁) ∘ (a₂, b₂) = (a₁a₂, a₂b₁ + b₂), so every h_t
is an inclusive prefix "sum" under ∘. The scan below combines neighbouring pairs level by level
(ceil(log₂ n) levels, each one vectorised multiply-add over half the previous length), then
fills in the remaining positions on the way back: O(n) work, O(log n) depth.
``linear_recurrence_loop`` is the plain sequential loop (n steps) it must equal.

Used by the linear mixers' scan form (states at chunk boundaries), by the stable cumulative
softmax average (AFT-simple, separable attention) and by linear RNNs.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..registry import TOOLS


def _shift(t: Tensor, offset: int, dim: int, fill: float) -> Tensor:
    """t shifted ``offset`` places later along ``dim``; the first ``offset`` entries = fill."""
    n = t.shape[dim]
    head = torch.full_like(t.narrow(dim, 0, offset), fill)
    return torch.cat([head, t.narrow(dim, 0, n - offset)], dim)


def _combine(a_prev: Tensor, b_prev: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """(a_prev, b_prev) ∘ (a, b): apply the earlier segment first, then the later one."""
    return a_prev * a, a * b_prev + b


def _prepare(a: Tensor, b: Tensor, h0: Tensor | None, dim: int):
    dim = dim % b.dim()
    if a.dim() != b.dim():
        raise ValueError(f"a ({a.dim()}-d) and b ({b.dim()}-d) need the same number of dims")
    a = a.expand_as(b) if a.shape != b.shape else a
    if h0 is not None:                         # fold h_0 into the first input: b_1 += a_1 h_0
        first = b.narrow(dim, 0, 1) + a.narrow(dim, 0, 1) * h0.unsqueeze(dim)
        b = torch.cat([first, b.narrow(dim, 1, b.shape[dim] - 1)], dim)
    return a, b, dim


def parallel_scan(a: Tensor, b: Tensor, h0: Tensor | None = None, dim: int = 1) -> Tensor:
    """All states of h_t = a_t ⊙ h_{t-1} + b_t along ``dim``: O(n) work, O(log n) depth.

    a: broadcastable to b with the same number of dims (e.g. (B, n, 1) decays for (B, n, d)
    inputs); b: (..., n, ...); h0: the state before the first step, b's shape without ``dim``
    (None = zeros). Returns h with b's shape. Differentiable; works for real or complex a, b.

    Odd–even (Blelloch-style) recursion rather than Hillis–Steele rounds: combine neighbouring
    pairs (one ∘ per pair, ceil(log₂ n) levels down to length 1), then fill the even positions
    from the odd ones on the way back. Each level halves the length, so the work — and the
    tensors autograd keeps for the backward — sum to O(n) instead of O(n log n); that log factor
    made every scan-based mixer super-linear in training (exponent ≈ 1.3 over 1k–16k). The
    backward is a second scan (``_Scan``), not autograd through every level.
    """
    a, b, dim = _prepare(a, b, h0, dim)
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        return _Scan.apply(a, b, dim)
    return _odd_even(a, b, dim)


class _Scan(torch.autograd.Function):
    """The scan with its adjoint as a second scan. The gradient of h_t = a_t h_{t-1} + b_t is
    the reverse linear recurrence G_t = ∂L/∂h_t + ā_{t+1} G_{t+1}, with ∂L/∂b_t = G_t and
    ∂L/∂a_t = G_t h̄_{t-1} (conjugates for complex a, b) — so only a and h are kept for the
    backward (2 tensors of b's size, not the every-level intermediates autograd would save and
    zero-fill), and the backward is one more O(n) scan."""

    @staticmethod
    def forward(ctx, a, b, dim):
        with torch.no_grad():
            h = _odd_even(a, b, dim)
        ctx.dim = dim
        ctx.real_a, ctx.real_b = not a.is_complex(), not b.is_complex()
        ctx.save_for_backward(a, h)
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gh):
        a, h = ctx.saved_tensors
        dim, n = ctx.dim, h.shape[ctx.dim]
        a_next = torch.cat([a.narrow(dim, 1, n - 1), torch.zeros_like(a.narrow(dim, 0, 1))], dim)
        if a_next.is_complex():
            a_next = a_next.conj()
        if gh.dtype != h.dtype:
            gh = gh.to(h.dtype)
        G = _odd_even(a_next.flip(dim), gh.flip(dim), dim).flip(dim)   # reverse recurrence
        h_prev = torch.cat([torch.zeros_like(h.narrow(dim, 0, 1)), h.narrow(dim, 0, n - 1)], dim)
        ga = G * (h_prev.conj() if h_prev.is_complex() else h_prev)
        gb = G
        if ctx.real_a and ga.is_complex():
            ga = ga.real
        if ctx.real_b and gb.is_complex():
            gb = gb.real
        return (ga if ctx.needs_input_grad[0] else None,
                gb if ctx.needs_input_grad[1] else None, None)


def _odd_even(a: Tensor, b: Tensor, dim: int) -> Tensor:
    n = b.shape[dim]
    if n <= 1:
        return b
    if n % 2:                                  # pad with the identity element (1, 0)
        a = torch.cat([a, torch.ones_like(a.narrow(dim, 0, 1))], dim)
        b = torch.cat([b, torch.zeros_like(b.narrow(dim, 0, 1))], dim)
    a2, b2 = a.unflatten(dim, (-1, 2)), b.unflatten(dim, (-1, 2))      # (..., n/2, 2, ...)
    a_even, a_odd = a2.select(dim + 1, 0), a2.select(dim + 1, 1)
    b_even, b_odd = b2.select(dim + 1, 0), b2.select(dim + 1, 1)
    h_odd = _odd_even(*_combine(a_even, b_even, a_odd, b_odd), dim)    # h_1, h_3, ... (0-based)
    h_even = a_even * _shift(h_odd, 1, dim, 0.0) + b_even              # h_{2i} from h_{2i-1}
    return torch.stack([h_even, h_odd], dim + 1).flatten(dim, dim + 1).narrow(dim, 0, n)


def linear_recurrence_loop(a: Tensor, b: Tensor, h0: Tensor | None = None,
                           dim: int = 1) -> Tensor:
    """The naive reference: the same recurrence, one step at a time (n sequential steps)."""
    a, b, dim = _prepare(a, b, None, dim)
    n = b.shape[dim]
    h = torch.zeros_like(b.narrow(dim, 0, 1).squeeze(dim)) if h0 is None else h0
    out = []
    for t in range(n):
        h = a.select(dim, t) * h + b.select(dim, t)
        out.append(h)
    return torch.stack(out, dim)


def scan_depth(n: int) -> int:
    """Rounds of ``parallel_scan`` for length n: ceil(log₂ n) (0 for n ≤ 1)."""
    return 0 if n <= 1 else math.ceil(math.log2(n))


TOOLS.register(
    "parallel_scan",
    paper="Parallelizing Linear Recurrent Neural Nets Over Sequence Length (Martin & Cundy, "
          "2018); Blelloch, Prefix Sums and Their Applications (1990)",
    equation="h_t = a_t ⊙ h_{t-1} + b_t as an inclusive scan under "
             "(a₁,b₁)∘(a₂,b₂) = (a₁a₂, a₂b₁+b₂) (odd–even recursion)",
    complexity=("O(n) work, O(log n) depth", "O(n)"),
    test="tests/papers/test_linear_scan.py::test_parallel_scan_equals_sequential_loop",
    tiny={},
)(parallel_scan)
