"""Associative (parallel) scan for first-order linear recurrences, and its naive reference.

Paper: Parallelizing Linear Recurrent Neural Nets Over Sequence Length (Martin & Cundy, 2018);
Blelloch, "Prefix Sums and Their Applications" (1990); Hillis & Steele (1986).

    h_t = a_t ⊙ h_{t-1} + b_t          (t = 1..n, h_0 given, elementwise / diagonal a_t)

The pairs (a, b) compose associatively:  (a₁, b₁) ∘ (a₂, b₂) = (a₁a₂, a₂b₁ + b₂), so every h_t
is an inclusive prefix "sum" under ∘. The Hillis–Steele scan below combines each element with
the one 1, 2, 4, ... places before it: ceil(log₂ n) rounds (the depth), O(n log n) work, each
round one vectorised multiply-add over the whole sequence. ``linear_recurrence_loop`` is the
plain sequential loop (n steps) it must equal.

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
    """All states of h_t = a_t ⊙ h_{t-1} + b_t along ``dim`` in ceil(log₂ n) rounds.

    a: broadcastable to b with the same number of dims (e.g. (B, n, 1) decays for (B, n, d)
    inputs); b: (..., n, ...); h0: the state before the first step, b's shape without ``dim``
    (None = zeros). Returns h with b's shape. Differentiable; works for real or complex a, b.
    """
    a, b, dim = _prepare(a, b, h0, dim)
    n = b.shape[dim]
    offset = 1
    while offset < n:                          # round r: combine with the element 2^r before
        a_prev = _shift(a, offset, dim, 1.0)   # identity element (1, 0) before the start
        b_prev = _shift(b, offset, dim, 0.0)
        a, b = _combine(a_prev, b_prev, a, b)
        offset *= 2
    return b


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
             "(a₁,b₁)∘(a₂,b₂) = (a₁a₂, a₂b₁+b₂) (Hillis–Steele rounds)",
    complexity=("O(n log n) work, O(log n) depth", "O(n)"),
    test="tests/papers/test_linear_scan.py::test_parallel_scan_equals_sequential_loop",
    tiny={},
)(parallel_scan)
