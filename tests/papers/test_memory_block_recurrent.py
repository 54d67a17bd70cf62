"""Block-Recurrent Transformer (Hutchins et al., 2022): the state update is the paper's LSTM
gate over [self-attention ; cross-attention] once per block, the sliding window sees the current
and previous block only, and the recurrent state carries information beyond that window."""
import math

import pytest
import torch
import torch.nn.functional as F

import tevo
from tevo.errors import ConfigError
from tevo.memory.xl import stream_logits

V = 31


def _model(block=3, states=2, n_layers=2, layer=None, **kw):
    torch.manual_seed(0)
    mem = {"name": "block_recurrent", "block": block, "states": states, "heads": 2}
    if layer is not None:
        mem["layer"] = layer
    cfg = {"arch": "gpt", "vocab_size": V, "d_model": 16, "n_layers": n_layers, "max_len": 64,
           "mixer": {"name": "softmax", "heads": 2}, "position": "rope", "memory": mem, **kw}
    return tevo.build_model(cfg).eval()


def _mha_loop(att, x, m, mask=None):
    """Multi-head attention one query and head at a time (before any output projection)."""
    H, d = att.heads, x.shape[-1]
    e = d // H
    q, k, v = att.q(x), att.k(m), att.v(m)
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            for h in range(H):
                sl = slice(h * e, (h + 1) * e)
                sc = torch.stack([q[b, t, sl] @ k[b, j, sl] / math.sqrt(e)
                                  for j in range(m.shape[1])])
                if mask is not None:
                    sc = sc.masked_fill(~mask[b], float("-inf"))
                out[b, t, sl] = torch.softmax(sc, 0) @ v[b, :, sl]
    return out


def _ref_update(mem, s, x):
    """The paper's horizontal direction written out: u = W_p[SelfAttn(h) ; CrossAttn(h → LN x)],
    c = s⊙σ(W_f u + b_f + 1) + tanh(W_z u + b_z)⊙σ(W_i u + b_i − 1), then the same gate on
    MLP(LN c)."""
    def ln(t, mod):
        return F.layer_norm(t, t.shape[-1:], mod.weight, mod.bias, mod.eps)

    def gate(g, c, u):
        d = c.shape[-1]
        W, bias = g.proj.weight, g.proj.bias
        z = u @ W[:d].T + bias[:d]
        i = u @ W[d:2 * d].T + bias[d:2 * d]
        f = u @ W[2 * d:].T + bias[2 * d:]
        return c * torch.sigmoid(f + 1) + torch.tanh(z) * torch.sigmoid(i - 1)

    h = ln(s + mem.state_ids, mem.state_norm)
    u = torch.cat([_mha_loop(mem.self_attn, h, h), _mha_loop(mem.cross_attn, h, ln(x, mem.tok_norm))],
                  -1) @ mem.proj.weight.T + mem.proj.bias
    c = gate(mem.gate1, s, u)
    return gate(mem.gate2, c, mem.mlp(ln(c, mem.mlp_norm)))


def test_state_update_is_the_papers_lstm_gate_over_attention_per_block():
    """Each block updates the state once, from the recurrent layer's token input; the result is
    the written-out equations, and the next block starts from it (s_0 learned)."""
    model = _model(block=3, layer=1)
    calls = []
    orig = model.memory.update_state

    def spy(s, x, mask):
        out = orig(s, x, mask)
        calls.append((s, x, out))
        return out
    model.memory.update_state = spy
    ids = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        out = model.forward_segment(ids)
        assert len(calls) == 3                                     # one update per block
        torch.testing.assert_close(calls[0][0], model.memory.state0.expand(2, -1, -1))
        for b, (s, x, new) in enumerate(calls):
            torch.testing.assert_close(new, _ref_update(model.memory, s, x), atol=1e-5, rtol=1e-5)
            if b:
                torch.testing.assert_close(s, calls[b - 1][2])
        torch.testing.assert_close(out.state["state"], calls[-1][2])


def test_calls_of_any_block_multiple_equal_one_call():
    """The window cache and the state are carried exactly: a stream read in calls of 3 or 6
    tokens (blocks of 3) gives the logits of one call over the whole stream."""
    model = _model(block=3)
    ids = torch.randint(0, V, (2, 18))
    with torch.no_grad():
        one = model.forward_segment(ids).logits
        a, _ = stream_logits(model, ids, 3)
        b, _ = stream_logits(model, ids, 6)
    torch.testing.assert_close(a, one, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b, one, atol=1e-5, rtol=1e-5)


def test_window_sees_the_previous_block_and_the_state_carries_further():
    """One layer, W = 3: with the state read switched off (W_o = 0) the last block depends on
    the previous block and not on earlier ones (sliding window over two blocks); with it on, a
    token four blocks back changes the last block through the recurrent state."""
    model = _model(block=3, n_layers=1, layer=0)
    ids = torch.randint(0, V, (1, 15))

    def last_block(m, x):
        with torch.no_grad():
            return m.forward_segment(x).logits[:, 12:]

    base = last_block(model, ids)
    far, near = ids.clone(), ids.clone()
    far[0, 0] = (far[0, 0] + 1) % V
    near[0, 10] = (near[0, 10] + 1) % V
    assert not torch.allclose(last_block(model, far), base)          # via the state
    with torch.no_grad():
        model.memory.read_out.weight.zero_()
        model.memory.read_out.bias.zero_()
    base = last_block(model, ids)
    assert torch.equal(last_block(model, far), base)                # outside the window
    assert not torch.allclose(last_block(model, near), base)         # previous block: inside


@pytest.mark.parametrize("mem,field", [
    ({"block": 0, "states": 2}, "model.memory.block"),
    ({"block": 3, "states": 0}, "model.memory.states"),
    ({"block": 3, "states": 2, "layer": 5}, "model.memory.layer"),
    ({"block": 3, "states": 2, "heads": 3}, "model.memory.heads"),
])
def test_bad_options_are_one_line_errors(mem, field):
    with pytest.raises(ConfigError) as e:
        tevo.build_model({"arch": "gpt", "vocab_size": V, "d_model": 16, "n_layers": 2,
                          "mixer": {"name": "softmax", "heads": 2}, "position": "rope",
                          "memory": {"name": "block_recurrent", **mem}})
    assert str(e.value).startswith(field) and "\n" not in str(e.value)
