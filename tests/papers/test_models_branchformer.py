"""Branchformer (Peng et al., 2022) and its cgMLP branch: cgMLP equals a loop of eq. 4–6 in the
causal and the centred form; a layer is exactly the paper's merge of its two branches (concat
and the attention-pooled learned weights); causal models decode like a full pass."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny import cached_logits, ctx_for, make_mixer

import tevo
from tevo.errors import ConfigError


def cgmlp_loop(m, x, causal: bool):
    """Z = GELU(XU); Z̃_t = Z₁,t ⊙ (Σ_j w_j LN(Z₂)_{t−j (causal) | t+h−j (centred)} + b); Y = Z̃V."""
    z1, z2 = F.gelu(m.proj_in(x)).chunk(2, -1)
    g = m.norm(z2)
    B, n, e = g.shape
    out = torch.zeros_like(z1)
    h = 0 if causal else m.k // 2
    for t in range(n):
        acc = torch.zeros(B, e)
        for j in range(m.k):
            s = t + h - j
            if 0 <= s < n:
                acc = acc + m.conv[:, j] * g[:, s]
        out[:, t] = z1[:, t] * (acc + m.conv_bias)
    return m.out_proj(out)


@pytest.mark.parametrize("causal", [True, False])
def test_cgmlp_equals_a_loop_of_its_equation(causal):
    m = make_mixer("cgmlp", causal, kernel=5)
    with torch.no_grad():
        m.conv.normal_(0, 0.5)                 # the init is near zero: make the conv matter
    x = torch.randn(2, 9, 16)
    y, _ = m(x, ctx_for(x, causal))
    torch.testing.assert_close(y, cgmlp_loop(m, x, causal), atol=1e-5, rtol=1e-5)
    x2 = x.clone()
    x2[:, 6] += 1.0                            # causal: nothing before 6 moves; centred: 4, 5 do
    y2, _ = m(x2, ctx_for(x2, causal))
    moved = (y2 - y).abs().amax((0, 2)) > 1e-6
    assert moved.nonzero().min().item() == (6 if causal else 4)
    with pytest.raises(ConfigError, match="kernel"):
        make_mixer("cgmlp", False, kernel=4)


def _model(merge="concat", causal=True):
    torch.manual_seed(0)
    return tevo.build_model({"arch": "branchformer", "vocab_size": 31, "d_model": 16,
                             "n_layers": 2, "max_len": 32, "position": "rope", "causal": causal,
                             "mixer": {"name": "softmax", "heads": 2},
                             "extra": {"merge": merge, "cgmlp_mult": 2.0, "cgmlp_kernel": 3}}
                            ).eval()


@pytest.mark.parametrize("merge,causal", [("concat", True), ("concat", False),
                                          ("learned", False)])
def test_a_layer_is_the_papers_merge_of_its_two_branches(merge, causal):
    m = _model(merge, causal)
    layer = m.blocks.blocks[0]
    with torch.no_grad():
        layer.mlp.conv.normal_(0, 0.5)
    x = torch.randn(2, 7, 16)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, :2] = False
    ctx = ctx_for(x, causal, mask=mask, pos=m.pos)
    got, _ = layer(x, ctx)
    ya, _ = layer.att(layer.norm_att(x), ctx)
    ym, _ = layer.mlp(layer.norm_mlp(x), ctx)
    if merge == "concat":
        want = x + layer.merge_proj(torch.cat([ya, ym], -1))
    else:                                      # eq. 7-9, pooling over real tokens only
        ws = []
        for y, p in zip((ya, ym), layer.pool):
            a = p(y).squeeze(-1).masked_fill(~mask, float("-inf")).softmax(-1)
            ws.append(layer.score((a.unsqueeze(-1) * y).sum(1)))
        w = torch.cat(ws, -1).softmax(-1)
        assert torch.allclose(w.sum(-1), torch.ones(2))
        want = x + layer.merge_proj(w[:, :1, None] * ya + w[:, 1:, None] * ym)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_causal_branchformer_decodes_like_a_full_pass_and_refuses_a_causal_learned_merge():
    m = _model()
    with torch.no_grad():
        for blk in m.blocks.blocks:
            blk.mlp.conv.normal_(0, 0.5)
    ids = torch.randint(0, 31, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, :3] = False
    full = m(ids, attention_mask=mask).logits
    torch.testing.assert_close(cached_logits(m, ids, mask, prefill=4)[mask], full[mask],
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="model.extra.merge"):
        _model("learned", causal=True)
