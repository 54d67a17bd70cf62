"""Memory Transformer (Burtsev et al., 2020): [mem] tokens prepended to an encoder; MemCtrl
updates them with its own layer weights; MemBottleneck makes the sequence read the freshly
updated memory only (written out with the layer's projections); padding is ignored."""
import math

import pytest
import torch
import torch.nn.functional as F

import tevo
from tevo.errors import ConfigError
from tevo.nn.context import MixerContext

V = 31


def _model(variant, k=3, n_layers=2, **kw):
    torch.manual_seed(0)
    return tevo.build_model({"arch": "memory_tokens", "vocab_size": V, "d_model": 16,
                             "n_layers": n_layers, "max_len": 32, "residual": "pre_ln",
                             "mixer": {"name": "softmax", "heads": 2}, "position": "learned",
                             "extra": {"mem_tokens": k, "mem_variant": variant}, **kw}).eval()


def _embedded(model, ids):
    pos = torch.arange(ids.shape[1]).expand_as(ids)
    return model.drop(model.pos.embed(model.embed(ids), pos)), pos


def _heads(model, h):
    return model.head(model.mlm_transform(model.norm(h) if model.norm is not None else h))


@pytest.mark.parametrize("variant", ["memtr", "memctrl"])
def test_variants_are_the_papers_layer_equations(variant):
    model = _model(variant)
    st = model.blocks
    ids = torch.randint(0, V, (2, 7))
    with torch.no_grad():
        x, pos = _embedded(model, ids)
        h = torch.cat([st.mem.expand(2, -1, -1), x], 1)
        ctx = MixerContext(causal=False, positions=torch.cat([torch.zeros(2, 3, dtype=torch.long),
                                                              pos], 1), pos=model.pos)
        for i, blk in enumerate(st.blocks):
            if variant == "memtr":                                   # one layer over both
                h, _ = blk(h, ctx)
            else:                                                    # controller for memory
                m, _ = st.ctrl[i](h, ctx)
                s, _ = blk(h, ctx)
                h = torch.cat([m[:, :3], s[:, 3:]], 1)
        torch.testing.assert_close(model(ids).logits, _heads(model, h[:, 3:]), atol=1e-5,
                                   rtol=1e-5)
    if variant == "memctrl":                                        # its own weights
        assert st.ctrl is not None and st.ctrl[0].sublayers[0].q_proj.weight is not \
            st.blocks[0].sublayers[0].q_proj.weight


def test_bottleneck_sequence_reads_only_the_updated_memory():
    """One layer: M' = Layer([mem ∘ x])[mem]; each sequence row then attends to M' alone:
    s_i = x_i + W_o Attn(q(LN x_i), k(LN M'), v(LN M')), then the FFN — written out here with
    the layer's projections (no attention pattern involved)."""
    model = _model("membottleneck", n_layers=1)
    st = model.blocks
    blk = st.blocks[0]
    mixer, ffn = blk.sublayers
    r0, r1 = blk.residuals
    ids = torch.randint(0, V, (2, 7))
    with torch.no_grad():
        x, pos = _embedded(model, ids)
        ctx = MixerContext(causal=False, positions=torch.cat([torch.zeros(2, 3, dtype=torch.long),
                                                              pos], 1), pos=model.pos)
        m = blk(torch.cat([st.mem.expand(2, -1, -1), x], 1), ctx)[0][:, :3]
        q = mixer.q_proj(r0.norm(x)).view(2, 7, 2, 8)
        kk = mixer.k_proj(r0.norm(m)).view(2, 3, 2, 8)
        vv = mixer.v_proj(r0.norm(m)).view(2, 3, 2, 8)
        w = torch.einsum("bihe,bjhe->bhij", q, kk).div(math.sqrt(8)).softmax(-1)
        a = torch.einsum("bhij,bjhe->bihe", w, vv).reshape(2, 7, 16)
        s = x + mixer.o_proj(a)
        s = s + ffn(r1.norm(s))
        torch.testing.assert_close(model(ids).logits, _heads(model, s), atol=1e-5, rtol=1e-5)
        # the sequence sees the other tokens only through the k = 3 memory vectors
        other = ids.clone()
        other[:, 5] = (other[:, 5] + 1) % V
        changed = (model(other).logits - model(ids).logits).abs().amax(-1)
        assert bool((changed[:, :5] > 0).all())                      # through the memory


@pytest.mark.parametrize("variant", ["memtr", "memctrl", "membottleneck"])
def test_padding_is_ignored(variant):
    model = _model(variant)
    ids = torch.randint(1, V, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[0, 6:] = False
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        alone = model(ids[:1, :6]).logits
    torch.testing.assert_close(full[0, :6], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("over,field", [
    ({"extra": {"mem_tokens": 0}}, "model.extra.mem_tokens"),
    ({"extra": {"mem_variant": "memlstm"}}, "model.extra.mem_variant"),
    ({"causal": True}, "model.causal"),
])
def test_bad_options_are_one_line_errors(over, field):
    cfg = {"arch": "memory_tokens", "vocab_size": V, "d_model": 16, "n_layers": 1,
           "mixer": {"name": "softmax", "heads": 2}, **over}
    with pytest.raises(ConfigError) as e:
        tevo.build_model(cfg)
    assert str(e.value).startswith(field) and "\n" not in str(e.value)


def test_gmat_is_global_memory_beside_a_local_band():
    """GMAT: with a band as wide as the input it is MemTransformer; with window w the one-layer
    output of token i is the written-out attention over the memory and tokens |i − j| ≤ w, so a
    token outside the band reaches i only through the global memory."""
    torch.manual_seed(0)
    cfg = {"arch": "gmat", "vocab_size": V, "d_model": 16, "n_layers": 1, "max_len": 32,
           "mixer": {"name": "softmax", "heads": 2}, "position": "learned",
           "extra": {"mem_tokens": 2, "window": 1}}
    model = tevo.build_model(cfg).eval()
    wide = tevo.build_model({**cfg, "extra": {"mem_tokens": 2, "window": 30}}).eval()
    memtr = tevo.build_model({**cfg, "arch": "memory_tokens",
                              "extra": {"mem_tokens": 2, "mem_variant": "memtr"}}).eval()
    wide.load_state_dict(model.state_dict())
    memtr.load_state_dict(model.state_dict())
    ids = torch.randint(0, V, (2, 7))
    blk = model.blocks.blocks[0]
    mixer, ffn = blk.sublayers
    r0, r1 = blk.residuals
    with torch.no_grad():
        torch.testing.assert_close(wide(ids).logits, memtr(ids).logits, atol=1e-6, rtol=1e-6)
        x, _ = _embedded(model, ids)
        h = torch.cat([model.blocks.mem.expand(2, -1, -1), x], 1)       # (2, 9, 16)
        hn = r0.norm(h)
        q = mixer.q_proj(hn).view(2, 9, 2, 8)
        kk = mixer.k_proj(hn).view(2, 9, 2, 8)
        vv = mixer.v_proj(hn).view(2, 9, 2, 8)
        allow = torch.ones(9, 9, dtype=torch.bool)
        for i in range(7):
            for j in range(7):
                allow[2 + i, 2 + j] = abs(i - j) <= 1
        s = torch.einsum("bihe,bjhe->bhij", q, kk).div(math.sqrt(8))
        a = s.masked_fill(~allow, float("-inf")).softmax(-1)
        y = h + mixer.o_proj(torch.einsum("bhij,bjhe->bihe", a, vv).reshape(2, 9, 16))
        y = y + ffn(r1.norm(y))
        torch.testing.assert_close(model(ids).logits, _heads(model, y[:, 2:]), atol=1e-5,
                                   rtol=1e-5)
