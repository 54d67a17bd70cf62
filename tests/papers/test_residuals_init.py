"""Improving Deep Transformer with Depth-Scaled Initialization and Merged Attention (Zhang,
Titov & Sennrich, 2019): DS-Init (eq. 10) and the merged attention sublayer MAtt (eqs. 12–14)."""
import math

import pytest
import torch

import tevo
from tevo.residuals.matt import MergedAttention


def _transformer(**kw):
    cfg = {"arch": "transformer", "vocab_size": 20, "d_model": 32, "n_layers": 4,
           "n_dec_layers": 3, "max_len": 32, "mixer": {"name": "softmax", "heads": 4},
           "residual": "post_ln", "ffn": {"name": "mlp", "d_ff": 256}}
    cfg.update(kw)
    return tevo.build_model(cfg).eval()


def test_dsinit_bounds_scale_with_depth():
    torch.manual_seed(0)
    model = _transformer(init={"name": "dsinit", "alpha": 1.0})
    for stack in (model.encoder, model.decoder):
        for l, block in enumerate(stack.blocks, start=1):
            for sub in block.sublayers:
                for m in sub.modules():
                    if isinstance(m, torch.nn.Linear):
                        d_out, d_in = m.weight.shape
                        bound = math.sqrt(6 / (d_in + d_out)) / math.sqrt(l)   # γ·α/√l
                        w = m.weight.abs()
                        assert w.max() <= bound
                        assert w.max() >= 0.9 * bound         # uniform: the bound is reached
                        # U(−b, b) has std b/√3
                        assert m.weight.std().item() == pytest.approx(bound / math.sqrt(3),
                                                                      rel=0.15)
                        if m.bias is not None:
                            assert not m.bias.any()
    # α scales every bound
    half = _transformer(init={"name": "dsinit", "alpha": 0.5})
    w = half.encoder.blocks[3].sublayers[1].fc1.weight
    assert w.abs().max() <= 0.5 * math.sqrt(6 / (32 + 256)) / 2
    with pytest.raises(tevo.ConfigError):
        _transformer(init={"name": "dsinit", "alpha": 1.5})


def _matt_reference(m: MergedAttention, x, mem, x_mask=None):
    """Eqs. 12–14 written out per position and head."""
    B, n, _ = x.shape
    h, e = m.heads, m.head_dim
    u = m.v_self(x)
    q = m.q_proj(x).view(B, n, h, e)
    k = m.k_proj(mem).view(B, -1, h, e)
    v = m.v_proj(mem).view(B, -1, h, e)
    out = torch.zeros(B, n, h * e)
    for b in range(B):
        for i in range(n):
            real = [j for j in range(i + 1) if x_mask is None or x_mask[b, j]]
            saan = u[b, real].mean(0) if real else torch.zeros(h * e)
            att = []
            for hh in range(h):
                w = torch.softmax(k[b, :, hh] @ q[b, i, hh] / math.sqrt(e), 0)
                att.append(w @ v[b, :, hh])
            out[b, i] = saan + torch.cat(att)
    return m.o_proj(out)


def test_merged_attention_formula_and_cached_decoding():
    torch.manual_seed(0)
    model = _transformer(init={"name": "dsinit", "merged_attention": True})
    for blk in model.decoder.blocks:
        assert blk.layout == ["c", "f"] and isinstance(blk.sublayers[0], MergedAttention)
    assert all(b.layout == ["a", "f"] for b in model.encoder.blocks)
    m = model.decoder.blocks[0].sublayers[0]
    x, mem = torch.randn(2, 7, 32), torch.randn(2, 5, 32)
    x_mask = torch.ones(2, 7, dtype=torch.bool)
    x_mask[1, :2] = False                                     # left padding in the decoder
    ctx = tevo.MixerContext(causal=True, key_padding_mask=x_mask, context=mem)
    y, _ = m(x, ctx)
    ref = _matt_reference(m, x, mem, x_mask)
    torch.testing.assert_close(y[x_mask], ref[x_mask], atol=1e-5, rtol=1e-4)
    # the whole model: prefill + single steps with the MAtt state equals the full pass
    src = torch.randint(0, 20, (2, 6))
    tgt = torch.randint(0, 20, (2, 9))
    memory = model.encode(src)
    full = model.decode(tgt, memory).logits
    st = model.init_state(2)
    o = model.decode(tgt[:, :4], memory, state=st)
    outs, st = [o.logits], o.state
    for t in range(4, 9):
        o = model.decode(tgt[:, t:t + 1], memory, state=st)
        outs.append(o.logits)
        st = o.state
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-4)
    # causal: a later target token changes no earlier output
    tgt2 = tgt.clone()
    tgt2[:, 5:] = (tgt2[:, 5:] + 1) % 20
    torch.testing.assert_close(model.decode(tgt2, memory).logits[:, :5], full[:, :5])
    # fewer decoder parameters than self-attention + cross-attention
    plain = _transformer()
    n = lambda mod: sum(p.numel() for p in mod.parameters())   # noqa: E731
    assert n(model.decoder) < n(plain.decoder)
    with pytest.raises(tevo.ConfigError):
        tevo.build_model({"arch": "gpt", "vocab_size": 20, "d_model": 32, "n_layers": 1,
                          "max_len": 16, "init": {"name": "dsinit", "merged_attention": True}})
