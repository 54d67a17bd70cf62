"""cosFormer: equals relu attention reweighted by cos(π(i−j)/2M) on absolute positions; padding
and decoding agree; forms agree."""
import math

import pytest
import torch

from tiny import make_mixer
from papers.linear_reference import (assert_rel_close, ctx, forms_agree, left_padded,
                                     prefill_then_steps)


@pytest.mark.parametrize("causal", [True, False])
def test_cosformer_equals_reweighted_relu_attention(causal):
    m = make_mixer("cosformer", causal, chunk=4)
    x, mask = left_padded(n=11)
    if not causal:
        mask = mask.flip(1)                                   # right padding
    y, _ = m(x, ctx(x, causal, mask))
    B, n, _ = x.shape
    h, e, M = m.heads, m.head_dim, m.fmap.M
    q, k, v = (p(x).view(B, n, h, e).transpose(1, 2) for p in (m.q_proj, m.k_proj, m.v_proj))
    pos = (mask.long().cumsum(-1) - 1).clamp_min(0).float()  # positions skip padding
    if not causal:                                           # M = each sequence's length
        M = mask.sum(-1).float()[:, None, None]
        assert not torch.equal(M.flatten(), torch.full((B,), float(m.fmap.M)))
    w = torch.cos(math.pi / 2 * (pos[:, :, None] - pos[:, None, :]) / M)   # (B, n, n)
    s = (q.relu() @ k.relu().transpose(-1, -2)) * w[:, None]
    s = s * mask[:, None, None, :]
    if causal:
        s = s.tril()
    ref = (s @ v) / s.sum(-1, keepdim=True).clamp_min(1e-6)
    ref = m.o_proj(ref.transpose(1, 2).reshape(B, n, h * e))
    assert_rel_close(y[mask], ref[mask], 1e-5)


def test_cosformer_forms_and_decoding_agree():
    m = make_mixer("cosformer", True, chunk=4)
    x, mask = left_padded()
    forms_agree(m, ["recurrent", "parallel", "chunk", "scan"], x, mask)
    y_inc, y_full, _ = prefill_then_steps(m, x, mask)
    assert_rel_close(y_inc[mask], y_full[mask], 1e-5)
