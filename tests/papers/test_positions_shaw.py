"""Shaw et al.: the bias equals the naive e_ij = q_i·(k_j + a^K_{clip(j-i,k)})/√d_z attention."""
import math

import torch

from tevo.positions.shaw import ShawRelativePosition
from tiny import ctx_for, make_mixer


def test_shaw_equals_naive_relative_key_formula():
    torch.manual_seed(2)
    heads, e, n, kmax = 2, 8, 11, 3
    pe = ShawRelativePosition(e, max_distance=kmax)
    m = make_mixer("softmax", True, heads=heads, impl="eager")
    x = torch.randn(2, n, 16)
    y, _ = m(x, ctx_for(x, True, pos=pe))
    # naive: materialise a^K_ij for every pair and attend with keys k_j + a_ij
    q = m._split(m.q_proj(x), heads)
    k = m._split(m.k_proj(x), heads)
    v = m._split(m.v_proj(x), heads)
    a = torch.empty(n, n, e)
    for i in range(n):
        for j in range(n):
            a[i, j] = pe.rel_k.weight[max(-kmax, min(kmax, j - i)) + kmax]
    scores = (q[:, :, :, None, :] * (k[:, :, None, :, :] + a)).sum(-1) / math.sqrt(e)
    scores = scores.masked_fill(~torch.ones(n, n).tril().bool(), float("-inf"))
    av = torch.empty(n, n, e)
    for i in range(n):
        for j in range(n):
            av[i, j] = pe.rel_v.weight[max(-kmax, min(kmax, j - i)) + kmax]
    w = scores.softmax(-1)                                                # (B, h, n, n)
    ref = m.o_proj(m._merge(w @ v + (w[..., None] * av).sum(-2)))
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-4)


def test_shaw_clips_distances_beyond_k():
    pe = ShawRelativePosition(8, max_distance=2)
    q = torch.randn(1, 2, 1, 8)
    pos_q, pos_k = torch.tensor([[20]]), torch.arange(21).unsqueeze(0)
    b = pe.bias(q, None, pos_q, pos_k)[0, :, 0]                         # (h, n_k)
    torch.testing.assert_close(b[:, :18], b[:, :1].expand(-1, 18))        # all clipped to -k
    assert not torch.allclose(b[:, 18], b[:, 19])
