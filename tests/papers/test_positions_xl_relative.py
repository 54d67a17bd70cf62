"""Transformer-XL relative encoding: the shift trick (and the gather path used with padding)
equal the naive O(n²) formula of A^rel; optionally the numbers of HF transformers' TransfoXL
attention (transformers <= 4.37.2 only)."""
import math

import pytest
import torch
from tiny import hf_transfo_xl

from tevo.positions.xl_relative import TransformerXLRelative, rel_shift, xl_sinusoid

TOL = dict(atol=1e-5, rtol=1e-4)


def _naive(pe, q, k, q_pos, k_pos):
    """scale·(q_i·W_R R_{i-j} + u·k_j + v·W_R R_{i-j}) one (i, j) pair at a time."""
    B, h, n_q, e = q.shape
    n_k = k.shape[2]
    out = torch.zeros(B, h, n_q, n_k)
    for b in range(B):
        for i in range(n_q):
            for j in range(n_k):
                d = (q_pos[b, i] - k_pos[b, j]).view(1)
                r = pe.r_net(xl_sinusoid(d, pe.d_model)).view(h, e)          # W_R R_{i-j}
                out[b, :, i, j] = ((q[b, :, i] * r).sum(-1) + (pe.u * k[b, :, j]).sum(-1)
                                   + (pe.v * r).sum(-1))
    return out * pe.scale


def _pe():
    return TransformerXLRelative(16, heads=2)


def test_xl_shift_trick_equals_naive_formula():
    pe = _pe()
    q, k = torch.randn(2, 2, 7, 8), torch.randn(2, 2, 7, 8)
    pos = torch.arange(7).expand(2, -1) + torch.tensor([[0], [5]])   # contiguous, any offset
    assert pe.contiguous(pos, pos)
    shift = pe.bias(q, k, pos, pos)
    torch.testing.assert_close(shift, _naive(pe, q, k, pos, pos), **TOL)
    # the gather path gives the same numbers
    qv = q + pe.v[None, :, None, :]
    torch.testing.assert_close(pe.position_scores(qv, pos, pos, shift=False),
                               pe.position_scores(qv, pos, pos, shift=True), **TOL)


def test_xl_decode_step_and_padding_equal_naive_formula():
    pe = _pe()
    k = torch.randn(2, 2, 9, 8)
    k_pos = torch.arange(9).expand(2, -1)
    q, q_pos = torch.randn(2, 2, 3, 8), k_pos[:, -3:]                 # last 3 queries (cache)
    assert pe.contiguous(q_pos, k_pos)
    torch.testing.assert_close(pe.bias(q, k, q_pos, k_pos), _naive(pe, q, k, q_pos, k_pos), **TOL)
    # left padding: padded slots repeat position 0, so the gather path runs
    padded = torch.tensor([[0, 0, 0, 0, 1, 2, 3, 4, 5], list(range(9))])
    assert not pe.contiguous(padded, padded)
    qq = torch.randn(2, 2, 9, 8)
    torch.testing.assert_close(pe.bias(qq, k, padded, padded), _naive(pe, qq, k, padded, padded),
                               **TOL)


def test_rel_shift_is_the_papers_index_map():
    n_q, n_k = 4, 6
    L = n_q + n_k - 1
    x = torch.arange(n_q * L).view(n_q, L).float()
    out = rel_shift(x)
    for i in range(n_q):
        for j in range(n_k):
            assert out[i, j] == x[i, j + n_q - 1 - i]


@pytest.mark.legacy_hf
@pytest.mark.skipif(hf_transfo_xl() is None, reason="TransfoXL needs transformers <= 4.37.2")
def test_xl_matches_hf_transfo_xl_attention_probabilities():
    mod = hf_transfo_xl()
    n, d, h, e = 7, 16, 2, 8
    attn = mod.RelPartialLearnableMultiHeadAttn(h, d, e, dropout=0.0).eval()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.3)
    w = torch.randn(n, 1, d)
    r = mod.PositionalEmbedding(d)(torch.arange(n - 1, -1, -1.0))     # (klen, 1, d)
    causal = torch.triu(torch.ones(n, n, dtype=torch.uint8), diagonal=1)
    ref = attn(w, r, attn_mask=causal[:, :, None], output_attentions=True)[-1]  # (q, k, B, h)
    ref = ref.permute(2, 3, 0, 1)
    pe = _pe()
    with torch.no_grad():
        pe.r_net.weight.copy_(attn.r_net.weight)
        pe.u.copy_(attn.r_w_bias)
        pe.v.copy_(attn.r_r_bias)
    wq, wk, _ = attn.qkv_net(w).chunk(3, dim=-1)
    q = wq.view(n, 1, h, e).permute(1, 2, 0, 3)
    k = wk.view(n, 1, h, e).permute(1, 2, 0, 3)
    pos = torch.arange(n).unsqueeze(0)
    scores = q @ k.transpose(-1, -2) / math.sqrt(e) + pe.bias(q, k, pos, pos)
    scores = scores.masked_fill(causal.bool(), float("-inf"))
    torch.testing.assert_close(scores.softmax(-1), ref, atol=1e-5, rtol=1e-4)



def test_per_layer_sets_and_clamp_len_equal_the_naive_formula():
    """per_layer_r / per_layer_uv: layer i's view uses its own W_R, u, v; clamp_len: every
    distance above it uses R_{clamp_len}."""
    C = 3
    pe = TransformerXLRelative(16, heads=2, per_layer_r=True, per_layer_uv=True, n_layers=3,
                               clamp_len=C)
    q, k = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    pos = torch.arange(6).unsqueeze(0)
    for layer in range(3):
        ref = torch.zeros(1, 2, 6, 6)
        u, v = pe.u[layer], pe.v[layer]
        for i in range(6):
            for j in range(6):
                d = torch.tensor([min(i - j, C)])
                r = pe.r_net[layer](xl_sinusoid(d, 16)).view(2, 8)            # W_R R_{min(d, C)}
                ref[0, :, i, j] = ((q[0, :, i] * r).sum(-1) + (u * k[0, :, j]).sum(-1)
                                   + (v * r).sum(-1))
        torch.testing.assert_close(pe.for_layer(layer).bias(q, k, pos, pos), ref * pe.scale,
                                   **TOL)
    shared = TransformerXLRelative(16, heads=2)
    assert shared.for_layer(1) is shared
