"""Memorizing Transformers (Wu et al., 2022): the kNN layer's output is the gated mix of local
attention and attention over the exact top-k of the external memory (brute-force reference), the
faiss and torch searches agree, the memory holds past segments only (FIFO), and it carries
information beyond the Transformer-XL window."""
import math

import pytest
import torch
import torch.nn.functional as F

import tevo
from tevo.errors import ConfigError
from tevo.memory.xl import stream_logits

V = 29


def _model(backend="torch", mem_len=3, mem_size=10, k=3, n_layers=2, position="none", **kw):
    torch.manual_seed(0)
    m = tevo.build_model({"arch": "gpt", "vocab_size": V, "d_model": 16, "n_layers": n_layers,
                          "max_len": 64, "mixer": {"name": "softmax", "heads": 2},
                          "position": position,
                          "memory": {"name": "memorizing", "mem_len": mem_len,
                                     "mem_size": mem_size, "k": k, "backend": backend, **kw}})
    with torch.no_grad():
        m.memory.gate.copy_(torch.tensor([0.7, -0.4]))
    return m.eval()


def _reference(mem, mixer, h, state, n):
    """The kNN layer's attention written out per row, head and query (no position encoding):
    V_c = causal softmax(q k/√e) v over the rows; V_m = softmax(s q̂·k̂_j) v_j over the k stored
    keys with the largest q̂·k̂ (brute force); out = W_o[σ(b)·V_m + (1−σ(b))·V_c]."""
    H, e = mixer.heads, mixer.head_dim
    B, L, _ = h.shape
    q, k, v = mixer.q_proj(h), mixer.k_proj(h), mixer.v_proj(h)
    out = torch.zeros(B, L, H * e)
    for b in range(B):
        real = state["knn_mask"][b].nonzero().flatten()
        for hd in range(H):
            sl = slice(hd * e, (hd + 1) * e)
            keys = state["knn_keys"][b, hd, real]                         # (M, e) normalised
            vals = state["knn_values"][b, hd, real]
            for t in range(L):
                sc = torch.stack([q[b, t, sl] @ k[b, j, sl] / math.sqrt(e) for j in range(t + 1)])
                v_c = torch.softmax(sc, 0) @ v[b, :t + 1, sl]
                qn = F.normalize(q[b, t, sl], dim=-1)
                sims = keys @ qn
                top = sims.topk(min(mem.k, len(real))).indices
                w = torch.softmax(mem.log_scale.exp()[hd] * sims[top], 0)
                v_m = w @ vals[top]
                g = torch.sigmoid(mem.gate[hd])
                out[b, t, sl] = g * v_m + (1 - g) * v_c
    return mixer.o_proj(out)


def test_memory_attention_equals_an_exact_knn_reference():
    model = _model()
    seen = []
    orig = model.memory.knn_attention

    def spy(mixer, h, ctx, memory, new, n):
        out = orig(mixer, h, ctx, memory, new, n)
        seen.append((mixer, h, memory, out))
        return out
    model.memory.knn_attention = spy
    ids = torch.randint(0, V, (2, 15))
    with torch.no_grad():
        stream_logits(model, ids, 5)
        mixer, h, state, out = seen[-1]                                   # third segment
        assert state["knn_keys"].shape[2] == 10 and bool(state["knn_mask"].all())
        ref = _reference(model.memory, mixer, h, state, 5)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_faiss_and_torch_search_give_the_same_outputs_and_the_memory_is_a_fifo_of_the_past():
    ids = torch.randint(0, V, (2, 20))
    a, b = _model("torch", position="rope"), _model("faiss", position="rope")
    with torch.no_grad():
        la, ma = stream_logits(a, ids, 4)
        lb, _ = stream_logits(b, ids, 4)
    torch.testing.assert_close(la, lb, atol=1e-5, rtol=1e-5)
    keys = ma["knn_keys"]                                               # (B, H, 10, e)
    assert keys.shape[:3] == (2, 2, 10) and not keys.requires_grad
    torch.testing.assert_close(keys.norm(dim=-1), torch.ones(2, 2, 10))
    assert ma["knn_mask"].all() and ma["seen"].tolist() == [20, 20]


def test_the_memory_reaches_beyond_the_xl_window_and_a_closed_gate_cuts_it():
    """One layer, XL cache of 2, segments of 4: the last segment cannot see segment 0 through
    attention (its window is 2 tokens back), but retrieves it from the memory; with the gate
    closed (g → 0) it does not."""
    model = _model(n_layers=1, mem_len=2, mem_size=32, k=4, position="rope")
    ids = torch.randint(0, V, (1, 16))

    def last(m, x):
        with torch.no_grad():
            return stream_logits(m, x, 4)[0][:, 12:]

    other = ids.clone()
    other[0, 1] = (other[0, 1] + 1) % V
    assert not torch.allclose(last(model, other), last(model, ids))
    with torch.no_grad():
        model.memory.gate.fill_(-1e4)
    torch.testing.assert_close(last(model, other), last(model, ids), atol=0, rtol=0)


@pytest.mark.parametrize("mem,field", [
    ({"mem_len": 4, "mem_size": 0}, "model.memory.mem_size"),
    ({"mem_len": 4, "mem_size": 8, "k": 0}, "model.memory.k"),
    ({"mem_len": 4, "mem_size": 8, "layer": 2}, "model.memory.layer"),
    ({"mem_len": 4, "mem_size": 8, "backend": "annoy"}, "model.memory.backend"),
    ({"mem_len": -1, "mem_size": 8}, "model.memory.mem_len"),
])
def test_bad_options_are_one_line_errors(mem, field):
    with pytest.raises(ConfigError) as e:
        tevo.build_model({"arch": "gpt", "vocab_size": V, "d_model": 16, "n_layers": 2,
                          "mixer": {"name": "softmax", "heads": 2}, "position": "rope",
                          "memory": {"name": "memorizing", **mem}})
    assert str(e.value).startswith(field) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="^model.mixer"):
        tevo.build_model({"arch": "gpt", "vocab_size": V, "d_model": 16, "n_layers": 1,
                          "mixer": {"name": "linear"}, "position": "rope",
                          "memory": {"name": "memorizing", "mem_len": 4, "mem_size": 8}})
