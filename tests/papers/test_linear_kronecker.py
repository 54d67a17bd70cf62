"""Kronecker attention: tokens on a row-major grid attend to its row and column averages
(KAO_KV), or the averages attend to themselves and each cell gets row + column outputs
(KAO_QKV); checked against an explicit grid loop, with padding skipped."""
import pytest
import torch

from tiny import make_mixer
from papers.linear_reference import assert_rel_close, ctx


def _attn(q, k, v, h):
    e = q.shape[-1] // h
    return torch.cat([(q[:, s] @ k[:, s].T / e ** 0.5).softmax(-1) @ v[:, s]
                      for s in (slice(i * e, (i + 1) * e) for i in range(h))], -1)


@pytest.mark.parametrize("mode", ["kv", "qkv"])
def test_kronecker_equals_grid_average_attention(mode):
    W = 4
    m = make_mixer("kronecker", False, width=W, mode=mode)
    x = torch.randn(2, 12, 16)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 10:] = False                                    # 10 real tokens: rows 4+4+2
    y, _ = m(x, ctx(x, False, mask))
    for b in range(2):
        xr = x[b][mask[b]]
        L = xr.shape[0]
        rows = [xr[r * W:(r + 1) * W].mean(0) for r in range(-(-L // W))]
        cols = [xr[c::W].mean(0) for c in range(W)]
        C = torch.stack(rows + cols)
        if mode == "kv":
            ref = _attn(m.q_proj(xr), m.k_proj(C), m.v_proj(C), 2)
        else:
            O = _attn(m.q_proj(C), m.k_proj(C), m.v_proj(C), 2)
            ref = torch.stack([O[t // W] + O[len(rows) + t % W] for t in range(L)])
        assert_rel_close(y[b][mask[b]], m.o_proj(ref), 1e-5)
