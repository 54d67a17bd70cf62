"""Combinations, not only features: every causal, cache-capable mixer × every position encoding
it accepts, inside a tiny LM, with left padding: prefill + one-token steps == full pass.
(Feature interactions — cache × rotary × bias × padding — are where peer libraries break.)"""
from __future__ import annotations

import pytest
import torch

import tevo
from tiny import cached_logits
from tevo.registry import MIXERS, POSITIONS


def combos():
    out = []
    for m in MIXERS.names():
        s = MIXERS.get(m).supports
        if not (s.causal and s.cache):
            continue
        for p in POSITIONS.names():
            if set(POSITIONS.get(p).obj.hooks) <= set(s.positions):
                out.append(pytest.param(m, p, id=f"{m}+{p}"))
    return out


@pytest.mark.parametrize("mixer,position", combos())
def test_cache_padding_position_combination(mixer, position):
    model = tevo.build_model({
        "arch": "gpt", "vocab_size": 40, "d_model": 16, "n_layers": 2, "max_len": 64,
        "mixer": {"name": mixer, **MIXERS.get(mixer).tiny},
        "position": {"name": position, **POSITIONS.get(position).tiny}}).eval()
    B, N = 2, 10
    ids = torch.randint(0, 40, (B, N))
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[0, :3] = False
    full = model(ids, attention_mask=mask).logits
    cached = cached_logits(model, ids, mask, prefill=4)
    torch.testing.assert_close(cached[mask], full[mask], atol=2e-5, rtol=1e-4)
