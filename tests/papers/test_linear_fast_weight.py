"""Fast weight programmer (delta rule): chunkwise == recurrent == parallel on outputs, state and
gradients; equals the paper's update written out; decoding continues the fast weights."""
import torch

from tiny import make_mixer

DPFP = {"name": "dpfp", "nu": 2}           # the paper's feature map
from papers.linear_reference import (assert_rel_close, ctx, forms_agree, left_padded,
                                     prefill_then_steps)


def test_chunkwise_equals_recurrent():
    m = make_mixer("fast_weight", True, chunk=4, feature_map=DPFP)
    x, mask = left_padded(n=14)
    forms_agree(m, ["recurrent", "chunk", "parallel"], x, mask)


def test_equals_the_papers_update_rule():
    """Eq. 23–25 with sum-normalised DPFP, one token at a time."""
    m = make_mixer("fast_weight", True, chunk=3, feature_map=DPFP)
    x = torch.randn(2, 8, 16)
    y, _ = m(x, ctx(x, True))
    B, n, _ = x.shape
    h, e = m.heads, m.head_dim
    q, k, v = (p(x).view(B, n, h, e).transpose(1, 2) for p in (m.q_proj, m.k_proj, m.v_proj))
    beta = torch.sigmoid(m.beta_proj(x)).transpose(1, 2)
    fq, fk = m.fmap(q), m.fmap(k)
    fq, fk = fq / fq.sum(-1, keepdim=True), fk / fk.sum(-1, keepdim=True)
    W = torch.zeros(B, h, fk.shape[-1], e)
    outs = []
    for t in range(n):
        v_bar = torch.einsum("bhm,bhme->bhe", fk[:, :, t], W)
        W = W + beta[:, :, t, None, None] * torch.einsum("bhm,bhe->bhme", fk[:, :, t],
                                                         v[:, :, t] - v_bar)
        outs.append(torch.einsum("bhm,bhme->bhe", fq[:, :, t], W))
    ref = m.o_proj(torch.stack(outs, 2).transpose(1, 2).reshape(B, n, h * e))
    assert_rel_close(y, ref, 1e-5)


def test_decoding_continues_the_fast_weights():
    m = make_mixer("fast_weight", True, chunk=4, feature_map=DPFP)
    x, mask = left_padded(n=15)
    y_inc, y_full, st = prefill_then_steps(m, x, mask)
    assert_rel_close(y_inc[mask], y_full[mask], 1e-5)
    assert st["S"].shape == (2, m.heads, m.fmap.out_dim, m.head_dim)
