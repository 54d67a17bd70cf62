"""Combiner: every position is reached directly or through a region summary (2 hops); the
factorised attention equals a direct transcription of eq. 6 for both partitions."""
import math

import pytest
import torch

from tevo.nn.context import MixerContext
from tiny import make_mixer


def _effective_weights(m, n, causal):
    x = torch.randn(1, n, 2 * n)
    ctx = MixerContext(causal=causal)
    q, k, _, _ = m.project(x, ctx, None)
    eye = torch.eye(n).expand(1, m.heads, n, n)          # values = one-hot → output = A_ij
    return m.attend_full(q, k, eye, torch.ones(1, n, dtype=torch.bool), ctx)


@pytest.mark.parametrize("partition", ["fixed", "axial"])
def test_combiner_every_position_reachable_in_two_hops(partition):
    n = 16
    for causal in (True, False):
        m = make_mixer("combiner", causal, d=2 * n, heads=2, block=4, partition=partition)
        with torch.no_grad():
            m.w_local.normal_()
        A = _effective_weights(m, n, causal)             # (1, h, n, n)
        torch.testing.assert_close(A.sum(-1), torch.ones(1, 2, n))
        support = torch.ones(n, n, dtype=torch.bool)
        if causal:
            support = support.tril()
            assert (A[..., ~support] == 0).all()
        assert (A[..., support] > 0).all()             # full attention support
        # one hop reaches only the own row: the rest must come through region summaries
        direct = (torch.arange(n)[:, None] // 4) == (torch.arange(n)[None, :] // 4)
        assert (support & ~direct).any()


def _naive(m, x, causal):
    """Eq. 6 per query: softmax over direct keys and region summaries, regions as sets."""
    B, n, _ = x.shape
    h, e, b = m.heads, m.head_dim, m.block
    q, k, v = (m._split(p(x), h) for p in (m.q_proj, m.k_proj, m.v_proj))
    out = torch.zeros_like(q)
    for hh in range(h):
        for i in range(n):
            r_i = i // b
            rel = (lambda r: r < r_i) if causal else (lambda r: r != r_i)
            direct = [j for j in range(n) if j // b == r_i and (not causal or j <= i)]
            if m.partition == "fixed":
                regions = [[j for j in range(n) if j // b == r] for r in range(math.ceil(n / b)) if rel(r)]
            else:
                regions = [[j for j in range(n) if j % b == c and rel(j // b)] for c in range(b)]
            regions = [R for R in regions if R]
            logits, vals = [], []
            for j in direct:
                logits.append(q[0, hh, i] @ k[0, hh, j] / math.sqrt(e))
                vals.append(v[0, hh, j])
            for R in regions:
                qj = torch.softmax(k[0, hh, R] @ m.w_local[hh] / math.sqrt(e), 0)   # q(j|Ω)
                logits.append(q[0, hh, i] @ (qj @ k[0, hh, R]) / math.sqrt(e) + math.log(len(R)))
                vals.append(qj @ v[0, hh, R])
            out[0, hh, i] = torch.softmax(torch.stack(logits), 0) @ torch.stack(vals)
    return m.o_proj(out.transpose(1, 2).reshape(B, n, -1))


@pytest.mark.parametrize("partition", ["fixed", "axial"])
def test_combiner_equals_direct_transcription(partition):
    for causal in (True, False):
        m = make_mixer("combiner", causal, heads=2, block=3, partition=partition)
        with torch.no_grad():
            m.w_local.normal_()
        x = torch.randn(1, 10, 16)
        y, _ = m(x, MixerContext(causal=causal))
        torch.testing.assert_close(y, _naive(m, x, causal), atol=1e-5, rtol=1e-4)
