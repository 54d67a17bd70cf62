"""GAU: equals its equations (shared Z, per-dim scales/offsets, relu²/n or softmax scoring,
U-gating) with padding, causal and bidirectional; the KV cache decodes exactly."""
import math

import pytest
import torch
import torch.nn.functional as F

from tiny import make_mixer
from papers.linear_reference import assert_rel_close, ctx, left_padded, prefill_then_steps


def _naive(m, x, causal, mask, scoring):
    p = m.proj
    u, v, z = F.silu(p.uvz(x)).split([p.e, p.e, p.s], -1)
    q = z * p.gamma[0] + p.beta[0]
    k = z * p.gamma[1] + p.beta[1]
    B, n, _ = x.shape
    out = torch.zeros(B, n, p.e)
    for b in range(B):
        for i in range(n):
            js = [j for j in range(n) if bool(mask[b, j]) and (j <= i or not causal)]
            if not js:
                continue
            s = torch.stack([q[b, i] @ k[b, j] for j in js]) / math.sqrt(p.s)
            w = s.softmax(0) if scoring == "softmax" else F.relu(s) ** 2 / len(js)
            out[b, i] = (w[:, None] * v[b, js]).sum(0)
    return m.o_proj(u * out)


@pytest.mark.parametrize("scoring", ["relu2", "softmax"])
@pytest.mark.parametrize("causal", [True, False])
def test_gau_equals_its_equations(causal, scoring):
    m = make_mixer("gau", causal, scoring=scoring)
    with torch.no_grad():
        m.proj.beta.normal_()                              # offsets matter
    x, mask = left_padded(n=9)
    if not causal:
        mask = mask.flip(1)
    y, _ = m(x, ctx(x, causal, mask))
    ref = _naive(m, x, causal, mask, scoring)
    assert_rel_close(y[mask], ref[mask], 1e-5)


def test_gau_cache_decodes_exactly():
    m = make_mixer("gau", True)
    x, mask = left_padded()
    y_inc, y_full, st = prefill_then_steps(m, x, mask)
    assert_rel_close(y_inc[mask], y_full[mask], 1e-5)
    assert st["k"].shape[2] == x.shape[1]
