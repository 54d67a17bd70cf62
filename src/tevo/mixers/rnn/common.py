"""Pieces shared by the linear RNNs and convolutional decoders of this folder.

- ``positive`` (``tevo.nn.ssm.check_positive``), ``in_range``: option validation (one-line
  ``ConfigError`` naming the option);
- ``real_mask``: the (B, n) mask of the current tokens (None = all real);
- ``hold_on_padding``: the (a, b) of a linear recurrence h_t = a_t h_{t-1} + b_t turned into the
  identity step (a = 1, b = 0) at padded positions, so a left-padded sequence starts from the
  initial state exactly as the unpadded one does;
- ``causal_taps``: the k inputs x_t, x_{t-d}, ..., x_{t-(k-1)d} of a causal (dilated) convolution
  for every t, continuing from a fixed-size buffer of the last (k-1)·d inputs (the decoding
  state of QRNN's and ByteNet's convolutions): one stacked view, O(n k d) memory.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ...errors import ConfigError
from ...nn.ssm import check_positive as positive  # noqa: F401  (re-exported for this family)


def in_range(field: str, value, lo: float, hi: float, lo_open=False, hi_open=False) -> float:
    """A float option in [lo, hi] (open ends where asked), else a one-line ConfigError."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        rng = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ConfigError(field, value, why=f"must be a number in {rng}, got {value!r}")
    return float(value)


def real_mask(ctx, n: int) -> Tensor | None:
    """(B, n) bool of the current tokens (True = real), or None when nothing is padded."""
    return ctx.query_mask(n)


def hold_on_padding(a: Tensor, b: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """a, b (B, n, ...): identity step (a = 1, b = 0) where mask (B, n) is False."""
    if mask is None:
        return a, b
    m = mask.reshape(mask.shape + (1,) * (b.dim() - 2))
    a = torch.where(m, a, torch.ones_like(a))
    b = torch.where(m, b, torch.zeros_like(b))
    return a, b


def zero_padding(x: Tensor, mask: Tensor | None) -> Tensor:
    """x (B, n, d) with padded positions set to 0 (what a causal convolution sees before t=0)."""
    return x if mask is None else x * mask[..., None].to(x.dtype)


def empty_taps_buffer(batch: int, k: int, dilation: int, d: int, device=None,
                      dtype=None) -> Tensor:
    """The decoding buffer of a causal convolution of k taps spaced ``dilation`` apart."""
    return torch.zeros(batch, (k - 1) * dilation, d, device=device,
                       dtype=dtype or torch.float32)


def causal_taps(x: Tensor, k: int, dilation: int = 1,
                buf: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """x (B, n, d) → taps (B, n, k, d) with taps[:, t, j] = x_{t - j·dilation} (zeros, or the
    buffer's entries, before the start) and the new buffer (B, (k-1)·dilation, d): the last
    (k-1)·dilation inputs, exactly what the next call needs."""
    B, n, d = x.shape
    P = (k - 1) * dilation
    if buf is None:
        buf = x.new_zeros(B, P, d)
    full = torch.cat([buf.to(x.dtype), x], 1)                   # (B, P + n, d)
    taps = torch.stack([full[:, P - j * dilation:P - j * dilation + n] for j in range(k)], 2)
    return taps, full[:, full.shape[1] - P:]
