"""Boolean masks (True = may attend). Built once per call, broadcast over heads."""
from __future__ import annotations

import torch
from torch import Tensor


def causal_mask(n_q: int, n_k: int, device=None) -> Tensor:
    """(n_q, n_k): query i (the last n_q of n_k positions) sees keys j <= i + (n_k - n_q)."""
    off = n_k - n_q
    i = torch.arange(n_q, device=device).unsqueeze(1)
    j = torch.arange(n_k, device=device).unsqueeze(0)
    return j <= i + off


def attention_mask(n_q: int, n_k: int, causal: bool, key_padding_mask: Tensor | None,
                   device=None) -> Tensor | None:
    """(B|1, 1, n_q, n_k) boolean mask combining causality and key padding, or None."""
    m = None
    if causal:
        m = causal_mask(n_q, n_k, device)[None, None]
    if key_padding_mask is not None:
        kp = key_padding_mask[:, None, None, :].bool()
        m = kp if m is None else (m & kp)
    return m


def fix_empty_rows(mask: Tensor) -> Tensor:
    """Rows with no allowed key (a padded query under a causal mask) would give NaN after the
    softmax; let them attend everywhere instead. Their outputs belong to padding and are unused."""
    return mask | ~mask.any(-1, keepdim=True)
