"""Shared checks for the long-convolution paper tests (not a test module).

``conv_block_loop`` is the plain loop of the S4-style block y = GLU(W GELU(Σ_j k_j u_{t-j}
(+ Σ_{j≥1} k_b,j u_{t+j}) + D u_t)) from a mixer's own kernels; ``forms_match_loop`` checks the
FFT form, the ring-buffer decode and the gradients against it on a left-padded batch."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from papers.linear_reference import assert_rel_close, ctx, left_padded, prefill_then_steps


def conv_block_loop(m, x, mask=None, causal=True):
    B, n, d = x.shape
    u = x if mask is None else x * mask[..., None]
    k_f, k_b = m.kernels(min(n, m.kernel_len))
    y = m.D * u
    cols = []
    for t in range(n):
        acc = y[:, t]
        for j in range(min(t + 1, k_f.shape[-1])):
            acc = acc + k_f[:, j] * u[:, t - j]
        if not causal:
            for j in range(1, min(n - t, k_b.shape[-1])):
                acc = acc + k_b[:, j] * u[:, t + j]
        cols.append(acc)
    return m.output(F.gelu(torch.stack(cols, 1)))


def forms_match_loop(m, n=13):
    """FFT full pass == loop (outputs and every gradient), decode == loop, on a left-padded
    batch; returns the decoding state."""
    x, mask = left_padded(n=n)
    xr = x.clone().requires_grad_(True)
    y_fft, _ = m(xr, ctx(xr, True, mask))
    y_loop = conv_block_loop(m, xr, mask)
    assert_rel_close(y_fft[mask], y_loop[mask], 1e-5, "FFT vs loop")
    w = torch.randn(x.shape)
    params = [xr] + [p for p in m.parameters() if p.requires_grad]
    g1 = torch.autograd.grad(((y_fft * w)[mask]).sum(), params, allow_unused=True)
    g2 = torch.autograd.grad(((y_loop * w)[mask]).sum(), params, allow_unused=True)
    for a, b in zip(g1, g2):
        assert (a is None) == (b is None)
        if a is not None:
            assert_rel_close(a, b, 1e-4, "gradient")
    y_inc, _, st = prefill_then_steps(m, x, mask)
    assert_rel_close(y_inc[mask], y_loop.detach()[mask], 1e-5, "decode vs loop")
    assert st["buf"].shape == (2, m.kernel_len - 1, x.shape[-1])     # fixed-size buffer
    return st


def bidirectional_matches_loop(m, n=11):
    x = torch.randn(2, n, m.d_model)
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, -3:] = False                                             # right padding
    y, _ = m(x, ctx(x, False, mask))
    assert_rel_close(y[mask], conv_block_loop(m, x, mask, causal=False)[mask], 1e-5,
                     "bidirectional FFT vs loop")
