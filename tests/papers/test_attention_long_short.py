"""Long-Short Transformer against a direct transcription of §3.1-3.4 (loops over queries)."""
import math

import torch

from tevo.nn.context import MixerContext, positions_from_mask
from tiny import make_mixer


def _reference(m, x, causal, mask):
    B, n, _ = x.shape
    h, e, w, l = m.heads, m.head_dim, m.window, m.segment
    q, k, v = (m._split(p(x), h) for p in (m.q_proj, m.k_proj, m.v_proj))
    pos = positions_from_mask(mask, n)
    out = torch.zeros_like(q)
    for b in range(B):
        real = [j for j in range(n) if mask[b, j]]
        for hh in range(h):
            # §3.1: P = softmax over the tokens (of a segment, §3.4) of K W^P
            pooled = {}                                   # segment -> (K̄, V̄), r rows each
            segs = sorted({int(pos[b, j]) // l for j in real}) if causal else [0]
            for s in segs:
                js = [j for j in real if not causal or int(pos[b, j]) // l == s]
                P = torch.softmax(k[b, hh, js] @ m.w_proj[hh], dim=0)      # (|s|, r)
                pooled[s] = (m.ln_global(P.t() @ k[b, hh, js]), m.ln_global(P.t() @ v[b, hh, js]))
            for i in real:
                loc = [j for j in real if abs(j - i) <= w and (not causal or j <= i)]
                K = [m.ln_local(k[b, hh, loc])]
                V = [m.ln_local(v[b, hh, loc])]
                for s, (kb, vb) in pooled.items():
                    if not causal or s < int(pos[b, i]) // l:
                        K.append(kb)
                        V.append(vb)
                a = torch.softmax(torch.cat(K) @ q[b, hh, i] / math.sqrt(e), 0)
                out[b, hh, i] = a @ torch.cat(V)
    return m.o_proj(out.transpose(1, 2).reshape(B, n, -1))


def test_long_short_matches_dense_reference():
    n = 13
    for causal in (True, False):
        m = make_mixer("long_short", causal, heads=2, window=2, rank=3, segment=4)
        with torch.no_grad():
            for ln in (m.ln_local, m.ln_global):
                ln.weight.normal_()
                ln.bias.normal_()
        x = torch.randn(2, n, 16)
        mask = torch.ones(2, n, dtype=torch.bool)
        if causal:
            mask[1, :3] = False
        else:
            mask[1, 10:] = False
        ctx = MixerContext(causal=causal, key_padding_mask=mask, positions=positions_from_mask(mask, n))
        y, _ = m(x, ctx)
        torch.testing.assert_close(y[mask], _reference(m, x, causal, mask)[mask], atol=1e-5, rtol=1e-4)
