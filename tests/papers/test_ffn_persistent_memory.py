"""Augmenting Self-attention with Persistent Memory (Sukhbaatar et al., 2019): the all-attention
layer, whose persistent key/value vectors replace the FFN, tested through a model of "a"-only
blocks."""
import math

import torch

import tevo
from tiny import cached_logits


def _model(**kw):
    cfg = {"arch": "gpt", "vocab_size": 40, "d_model": 32, "n_layers": 2, "max_len": 32,
           "layout": "a", "mixer": {"name": "persistent_memory", "heads": 4, "n_persistent": 8,
                                    "impl": "eager"}}
    cfg.update(kw)
    return tevo.build_model(cfg).eval()


def _reference(m, x, causal=True, mask=None):
    """Eqs. 6–8 per head and position: softmax over the t visible token keys and all N
    persistent keys (scaled as in the reference code), then the weighted values."""
    B, n, _ = x.shape
    h, e, N = m.heads, m.head_dim, m.n_persistent
    q = m.q_proj(x).view(B, n, h, e)
    k = m.k_proj(x).view(B, n, h, e)
    v = m.v_proj(x).view(B, n, h, e)
    mk, mv = m.mem_k * math.sqrt(e), m.mem_v * math.sqrt(N)
    out = torch.zeros(B, n, h * e)
    for b in range(B):
        for t in range(n):
            for hh in range(h):
                js = [j for j in range(n) if (not causal or j <= t)
                      and (mask is None or mask[b, j])]
                keys = torch.cat([k[b, js, hh], mk[hh]])
                vals = torch.cat([v[b, js, hh], mv[hh]])
                a = torch.softmax(keys @ q[b, t, hh] / math.sqrt(e), 0)
                out[b, t, hh * e:(hh + 1) * e] = a @ vals
    return m.o_proj(out)


def test_all_attention_model_matches_reference():
    torch.manual_seed(0)
    model = _model()
    # the persistent vectors take the place of the FFN: no FFN parameters in the model
    assert all(b.layout == ["a"] for b in model.blocks.blocks)
    assert not any("fc1" in n or "fc2" in n for n, _ in model.named_parameters())
    m = model.blocks.blocks[0].sublayers[0]
    assert m.mem_k.shape == m.mem_v.shape == (4, 8, 8)       # per head, N vectors
    x = torch.randn(2, 9, 32)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, :3] = False
    ctx = tevo.MixerContext(causal=True, key_padding_mask=mask,
                            positions=torch.arange(9).expand(2, 9))
    y, _ = m(x, ctx)
    torch.testing.assert_close(y[mask], _reference(m, x, True, mask)[mask], atol=1e-5, rtol=1e-4)
    yb, _ = m(x, tevo.MixerContext(causal=False))
    torch.testing.assert_close(yb, _reference(m, x, False), atol=1e-5, rtol=1e-4)
    # the first token sees only itself and the memory, never an empty softmax row
    ids = torch.randint(0, 40, (2, 12))
    full = model(ids).logits
    assert torch.isfinite(full).all()
    # fused kernel == eager; cached decoding == full pass
    fused = _model(mixer={"name": "persistent_memory", "heads": 4, "n_persistent": 8})
    fused.load_state_dict(model.state_dict())
    torch.testing.assert_close(fused(ids).logits, full, atol=1e-5, rtol=1e-4)
    cached = cached_logits(model, ids)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-4)
    # the persistent vectors matter and are learned
    model.train()
    loss = model(ids).logits.logsumexp(-1).mean()
    loss.backward()
    assert m.mem_k.grad.abs().sum() > 0 and m.mem_v.grad.abs().sum() > 0


def test_persistent_memory_alone_is_a_softmax_ffn():
    """With the token keys pushed far below the persistent ones, the layer is
    softmax(q M_kᵀ/√e) M_v per head: a two-layer FFN with a softmax non-linearity."""
    torch.manual_seed(0)
    m = _model().blocks.blocks[0].sublayers[0]
    with torch.no_grad():
        m.k_proj.weight.zero_()
        m.k_proj.bias.zero_()
        m.mem_k.add_(3.0 * torch.sign(m.mem_k))               # token scores 0, memory ≫ 0
    x = torch.randn(1, 5, 32)
    q = m.q_proj(x).view(1, 5, 4, 8)
    q = q * 10.0 / q.norm(dim=-1, keepdim=True)               # large queries
    mk, mv = m.persistent(torch.float32)
    a = torch.softmax(torch.einsum("bnhe,hme->bnhm", q, mk) / math.sqrt(8), -1)
    ffn_like = torch.einsum("bnhm,hme->bnhe", a, mv).reshape(1, 5, 32)
    # the same queries through the layer's attention (tokens visible, scores 0)
    k = m.k_proj(x).view(1, 5, 4, 8).transpose(1, 2)
    v = m.v_proj(x).view(1, 5, 4, 8).transpose(1, 2)
    y = m.attend(q.transpose(1, 2), k, v, None, None, tevo.MixerContext())
    y = y.transpose(1, 2).reshape(1, 5, 32)
    mem_scores = torch.einsum("bnhe,hme->bnhm", q, mk) / math.sqrt(8)
    w_tok = 5 / (5 + mem_scores.exp().sum(-1))                 # 5 token keys with score 0
    assert w_tok.max() < 0.05                                  # tokens get < 5% of the weight
    assert (y - ffn_like).abs().max() < 0.1 * ffn_like.abs().max()
