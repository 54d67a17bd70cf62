"""Compressive Transformer (Rae et al., 2020): the compressed memory is f_c of the rows evicted
from the XL memory (§3, Alg. 1), the attention-reconstruction loss is the paper's equation
(§3.2, Alg. 2) and trains the compression network alone (it falls in training), and with rate 1
and identity compression the two memories together are an XL memory of the summed length."""
import math

import pytest
import torch
import torch.nn.functional as F

import tevo
from tevo.errors import ConfigError
from tevo.memory.xl import stream_logits

V = 37


def _model(memory, n_layers=2, **kw):
    torch.manual_seed(0)
    cfg = {"arch": "gpt", "vocab_size": V, "d_model": 16, "n_layers": n_layers, "max_len": 64,
           "mixer": {"name": "softmax", "heads": 2}, "position": "xl_relative",
           "memory": memory, **kw}
    return tevo.build_model(cfg).eval()


def _layer_inputs(model):
    """Hooks recording each block's input rows (h̃ = [cm ∘ m ∘ h]) of every call."""
    seen = []
    for blk in model.blocks.blocks:
        blk.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    return seen


@pytest.mark.parametrize("compression", ["mean_pool", "max_pool", "conv"])
def test_rate_one_identity_compression_is_an_xl_memory_of_the_summed_length(compression):
    """c = 1 with pooling is the identity: evicted rows move to the compressed memory unchanged,
    so [cm ∘ m] is the last n_cm + n_m rows, exactly Transformer-XL with mem_len = n_cm + n_m.
    (conv with c = 1 is a learned linear map: it must differ.)"""
    comp = _model({"name": "compressive", "mem_len": 3, "cmem_len": 5, "rate": 1,
                   "compression": compression})
    xl = _model({"name": "xl_memory", "mem_len": 8})
    xl.load_state_dict(comp.state_dict(), strict=False)
    ids = torch.randint(0, V, (2, 29))
    with torch.no_grad():
        a, mem = stream_logits(comp, ids, 4)
        b, _ = stream_logits(xl, ids, 4)
    assert mem["positions"].shape[1] == 3 and mem["comp_positions"].shape[1] == 5
    if compression == "conv":
        assert (a - b).abs().max() > 1e-3
    else:
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_compressed_memory_is_f_c_of_the_evicted_rows_at_their_last_position():
    """Segments of 6, n_m = 4, c = 2: after segment 1 the memory holds rows 2..5 of each layer's
    input; segment 2 evicts them and rows 0..1 of its own input (6 rows -> 3 compressed rows),
    each the conv (kernel = stride = c) of its pair, placed at the pair's last position."""
    model = _model({"name": "compressive", "mem_len": 4, "cmem_len": 8, "rate": 2})
    inputs = _layer_inputs(model)
    ids = torch.randint(0, V, (2, 12))
    with torch.no_grad():
        m1 = model.forward_segment(ids[:, :6]).state
        inputs.clear()
        m2 = model.forward_segment(ids[:, 6:], m1).state
    assert m1["positions"][0].tolist() == [2, 3, 4, 5] and m1["comp_positions"][0].tolist() == [1]
    assert m2["positions"][0].tolist() == [8, 9, 10, 11]
    assert m2["comp_positions"][0].tolist() == [1, 3, 5, 7]
    for i, conv in enumerate(model.memory.convs):
        h = inputs[i][:, -6:]                                           # this segment's rows
        old = torch.cat([m1["layers"][i], h[:, :2]], 1)                 # (B, 6, d) evicted
        for j in range(3):
            pair = old[:, 2 * j:2 * j + 2]                               # (B, 2, d)
            want = torch.einsum("ocr,brc->bo", conv.weight, pair) + conv.bias
            torch.testing.assert_close(m2["comp"][i][:, 1 + j], want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(m2["layers"][i], h[:, 2:])


def _attn_loop(mixer, h, mem):
    """attn(h, mem), one query and one head at a time: softmax_j(q·k_j/√e) v_j, the heads'
    outputs concatenated (before W_o, a fixed linear map of them)."""
    H, e = mixer.heads, mixer.head_dim
    out = torch.zeros(h.shape[0], h.shape[1], H * e, dtype=torch.float64)
    Wq, Wk, Wv = (p.weight.double() for p in (mixer.q_proj, mixer.k_proj, mixer.v_proj))
    bq, bk, bv = (p.bias.double() for p in (mixer.q_proj, mixer.k_proj, mixer.v_proj))
    for b in range(h.shape[0]):
        for t in range(h.shape[1]):
            q = Wq @ h[b, t].double() + bq
            for hd in range(H):
                sl = slice(hd * e, (hd + 1) * e)
                scores = torch.stack([(q[sl] @ (Wk @ m.double() + bk)[sl]) / math.sqrt(e)
                                      for m in mem[b]])
                w = torch.softmax(scores, 0)
                out[b, t, sl] = sum(w[j] * (Wv @ mem[b, j].double() + bv)[sl]
                                    for j in range(mem.shape[1]))
    return out


def test_reconstruction_loss_is_the_papers_equation_and_falls_in_training():
    """L_attn = Σ_l mean ||attn(h^l, old_mem^l) − attn(h^l, conv(old_mem^l))||² checked against a
    loop over queries and heads; the main loss sends no gradient into the compression network,
    L_attn does, and minimising it (Adam on f_c alone, as the paper trains it) lowers it."""
    model = _model({"name": "compressive", "mem_len": 4, "cmem_len": 8, "rate": 2}).train()
    inputs = _layer_inputs(model)
    ids = torch.randint(0, V, (2, 12))
    m1 = model.forward_segment(ids[:, :6]).state
    inputs.clear()
    out = model.forward_segment(ids[:, 6:], m1)
    ref = 0.0
    for i, blk in enumerate(model.blocks.blocks):
        mixer, conv = blk.sublayers[0], model.memory.convs[i]
        h = inputs[i][:, -6:].detach()
        old = torch.cat([m1["layers"][i], h[:, :2]], 1)
        comp = conv(old.transpose(1, 2)).transpose(1, 2)
        ref = ref + ((_attn_loop(mixer, h, old) - _attn_loop(mixer, h, comp)) ** 2).mean()
    got = out.extra["aux"]["compressive_recon"][0]
    assert abs(got.item() - ref.item()) < 1e-5 * max(1.0, ref.item()), (got.item(), ref.item())
    conv_params = list(model.memory.convs.parameters())
    g_main = torch.autograd.grad(out.logits.sum(), conv_params, allow_unused=True, retain_graph=True)
    assert all(g is None for g in g_main)                     # compressed memory is SG
    g_aux = torch.autograd.grad(got, conv_params)
    assert all(g.abs().sum() > 0 for g in g_aux)
    other = [p for n, p in model.named_parameters() if not n.startswith("memory.")]
    assert all(g is None for g in torch.autograd.grad(got, other, allow_unused=True))

    opt = torch.optim.Adam(conv_params, lr=1e-2)
    torch.manual_seed(1)
    stream = torch.randint(0, V, (4, 6 * 31))
    curve = []
    mem = None
    for s in range(0, stream.shape[1], 6):
        o = model.forward_segment(stream[:, s:s + 6], mem)
        mem = o.state
        if "compressive_recon" in o.extra["aux"]:
            loss = o.extra["aux"]["compressive_recon"][0]
            opt.zero_grad()
            loss.backward()
            opt.step()
            curve.append(loss.item())
    assert sum(curve[-5:]) / 5 < 0.5 * sum(curve[:5]) / 5, curve


def test_most_used_keeps_evicted_rows_that_received_the_most_attention():
    """most_used (no parameters, no L_attn): the compressed slots are evicted rows themselves,
    in stream order, at their own positions; every layer keeps the same tokens."""
    model = _model({"name": "compressive", "mem_len": 4, "cmem_len": 8, "rate": 2,
                    "compression": "most_used"})
    ids = torch.randint(0, V, (2, 12))
    with torch.no_grad():
        m1 = model.forward_segment(ids[:, :6]).state
        o = model.forward_segment(ids[:, 6:], m1)
    m2 = o.state
    assert "compressive_recon" not in o.extra["aux"]
    pos = m2["comp_positions"]                                          # (B, 4): 1 + 3 kept
    assert pos.shape == (2, 4) and bool((pos[:, 1:].diff(dim=1) > 0).all())
    assert bool(((pos[:, 1:] >= 2) & (pos[:, 1:] <= 7)).all())
    for i in range(2):
        old = torch.cat([m1["layers"][i], torch.zeros(2, 2, 16)], 1)   # rows at positions 2..5
        for b in range(2):
            for j in range(1, 4):
                p = int(pos[b, j])
                if p <= 5:
                    torch.testing.assert_close(m2["comp"][i][b, j], old[b, p - 2])


@pytest.mark.parametrize("mem,field", [
    ({"mem_len": 0, "cmem_len": 4}, "model.memory.mem_len"),
    ({"mem_len": 4, "cmem_len": -1}, "model.memory.cmem_len"),
    ({"mem_len": 4, "cmem_len": 4, "rate": 0}, "model.memory.rate"),
    ({"mem_len": 4, "cmem_len": 4, "compression": "zip"}, "model.memory.compression"),
    ({"mem_len": 4, "cmem_len": 4, "recon_weight": -1.0}, "model.memory.recon_weight"),
])
def test_bad_options_are_one_line_errors(mem, field):
    with pytest.raises(ConfigError) as e:
        _model({"name": "compressive", **mem})
    assert str(e.value).startswith(field) and "\n" not in str(e.value)


def test_a_bidirectional_model_or_a_mixer_without_projections_is_refused():
    with pytest.raises(ConfigError, match="^model.arch"):
        _model({"name": "compressive", "mem_len": 4, "cmem_len": 4}, arch="bert")
    with pytest.raises(ConfigError, match="^model.causal"):
        _model({"name": "compressive", "mem_len": 4, "cmem_len": 4}, causal=False)
    with pytest.raises(ConfigError, match="^model.mixer"):
        _model({"name": "compressive", "mem_len": 4, "cmem_len": 4}, mixer={"name": "linear"},
               position="rope")
