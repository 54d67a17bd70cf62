"""Token shift: each position reads the previous token's vector (RWKV's time_shift).

Paper: RWKV: Reinventing RNNs for the Transformer Era (Peng et al., 2023), §3.1 eq. 11–16:
every time-mix and channel-mix input is an interpolation μ ⊙ x_t + (1 − μ) ⊙ x_{t−1}.

    shifted_t = x_{t−1}   (t ≥ 1),   shifted_0 = prev  (the state: the last token of the
                                                        previous call, zeros at the start)

Padded positions (mask False) count as zero vectors, so with left padding the first real
token reads zeros exactly as it does without padding. O(n d) time and memory; the state is
one (B, d) vector.
"""
from __future__ import annotations

import torch
from torch import Tensor


def token_shift(x: Tensor, prev: Tensor | None = None,
                mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """x (B, n, d), prev (B, d) or None (zeros), mask (B, n) True = real token.
    Returns (shifted (B, n, d), last (B, d)): the input of each position's previous token and
    the state for the next call (the last, masked, token)."""
    if mask is not None:
        x = x * mask.unsqueeze(-1).to(x.dtype)
    first = torch.zeros_like(x[:, :1]) if prev is None else prev.unsqueeze(1).to(x.dtype)
    shifted = torch.cat([first, x[:, :-1]], 1)                   # (B, n, d)
    return shifted, x[:, -1]
