"""H-Transformer-1D: the error against dense attention shrinks as the blocks get larger (fewer,
finer coarse levels) and vanishes when the sibling level is the finest one; the hierarchy
matches a per-query transcription of the H-matrix partition."""
import math

import torch

from tevo.nn.attention import eager_attention
from tevo.nn.context import MixerContext
from tiny import make_mixer


def test_error_vs_dense_shrinks_with_finer_levels():
    n = 32
    for causal in (False, True):
        errs = {}
        for _ in range(3):
            m = make_mixer("h_transformer", causal, heads=2, block=2)
            x = torch.cumsum(torch.randn(1, n, 16) * 0.3, 1) + torch.randn(1, n, 16) * 0.5
            ctx = MixerContext(causal=causal)
            q, k, v, _ = m.project(x, ctx, None)
            mask = torch.ones(n, n, dtype=torch.bool).tril()[None, None] if causal else None
            ref = eager_attention(q, k, v, mask=mask)
            for nr in (1, 2, 4, 8, 16):
                m.block = nr
                y = m.attend_full(q, k, v, torch.ones(1, n, dtype=torch.bool), ctx)
                errs.setdefault(nr, []).append(((y - ref).norm() / ref.norm()).item())
        mean = [sum(errs[nr]) / 3 for nr in (1, 2, 4, 8, 16)]
        assert all(a > b for a, b in zip(mean, mean[1:])), mean
        assert mean[-1] < 1e-6                       # two blocks: the sibling level is exact


def _naive_bidirectional(q, k, v, nr):
    """For each query i and key j: exact if in the same block, else at the level l where their
    blocks of nr·2^l are siblings, through the 2^l-group means of queries and keys."""
    n, e = q.shape[-2], q.shape[-1]
    out = torch.zeros_like(q)
    for i in range(n):
        logits, vals = [], []
        seen = set()
        for j in range(n):
            if i // nr == j // nr:
                logits.append(q[i] @ k[j] / math.sqrt(e))
                vals.append(v[j])
                continue
            l = 0
            while (i // (nr << l)) // 2 != (j // (nr << l)) // 2:
                l += 1
            f = 1 << l
            g = (l, j // f)
            if g in seen:
                continue
            seen.add(g)
            qg = q[i // f * f:(i // f + 1) * f].mean(0)
            kg = k[j // f * f:(j // f + 1) * f].mean(0)
            logits.append(qg @ kg / math.sqrt(e) + math.log(f))
            vals.append(v[j // f * f:(j // f + 1) * f].mean(0))
        out[i] = torch.softmax(torch.stack(logits), 0) @ torch.stack(vals)
    return out


def test_h_transformer_matches_hierarchical_transcription():
    m = make_mixer("h_transformer", False, heads=1, block=2)
    x = torch.randn(1, 16, 16)
    ctx = MixerContext()
    q, k, v, _ = m.project(x, ctx, None)
    y = m.attend_full(q, k, v, torch.ones(1, 16, dtype=torch.bool), ctx)
    torch.testing.assert_close(y[0, 0], _naive_bidirectional(q[0, 0], k[0, 0], v[0, 0], 2),
                               atol=1e-5, rtol=1e-4)
