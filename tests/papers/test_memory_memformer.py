"""Memformer (Wu et al., 2022): the writer is slot-wise attention over [own slot ; segment] with
a forgetting bias on the self score and a LayerNorm, every layer reads the memory, segments see
each other only through it, and a large forgetting bias keeps the memory."""
import math

import pytest
import torch
import torch.nn.functional as F

import tevo
from tevo.errors import ConfigError
from tevo.memory.xl import stream_logits

V = 23


def _model(slots=3, segment=4, bptt=1, **kw):
    torch.manual_seed(0)
    return tevo.build_model({"arch": "gpt", "vocab_size": V, "d_model": 16, "n_layers": 2,
                             "max_len": 64, "mixer": {"name": "softmax", "heads": 2},
                             "position": "rope",
                             "memory": {"name": "memformer", "slots": slots, "segment": segment,
                                        "bptt": bptt, "heads": 2}, **kw})


def _write_loop(w, m, h, mask):
    """m'_i = Σ softmax([q_i·k(m_i)/√e + b_i ; q_i·k(h_j)/√e]) [v(m_i) ; v(h_j)], per slot and
    head, slots never attending to one another; then W_o and LayerNorm."""
    B, k, d = m.shape
    H, e = w.heads, d // w.heads
    q, km, vm, kh, vh = w.q(m), w.k(m), w.v(m), w.k(h), w.v(h)
    out = torch.zeros(B, k, d)
    for b in range(B):
        real = mask[b].nonzero().flatten()
        for i in range(k):
            for hd in range(H):
                sl = slice(hd * e, (hd + 1) * e)
                scores = [q[b, i, sl] @ km[b, i, sl] / math.sqrt(e) + w.forget_bias[i]]
                scores += [q[b, i, sl] @ kh[b, j, sl] / math.sqrt(e) for j in real]
                a = torch.softmax(torch.stack(scores), 0)
                vals = torch.stack([vm[b, i, sl]] + [vh[b, j, sl] for j in real])
                out[b, i, sl] = a @ vals
    return F.layer_norm(w.o(out), (d,), w.norm.weight, w.norm.bias, w.norm.eps)


def test_writer_is_slot_wise_attention_with_forgetting_bias_and_every_layer_reads():
    model = _model().eval()
    with torch.no_grad():
        model.memory.writer.forget_bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    writes = []
    orig = model.memory.writer.forward
    model.memory.writer.forward = lambda m, h, mask: writes.append((m, h, mask, orig(m, h, mask))) \
        or writes[-1][3]
    reads = [0, 0]
    for i, r in enumerate(model.memory.readers):
        r.register_forward_hook(lambda mod, inp, out, i=i: reads.__setitem__(i, reads[i] + 1))
    ids = torch.randint(0, V, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[0, :2] = False
    with torch.no_grad():
        out = model.forward_segment(ids, attention_mask=mask)
        assert len(writes) == 2 and reads == [2, 2]                 # every layer, every segment
        torch.testing.assert_close(writes[0][0], model.memory.memory0.expand(2, -1, -1))
        for m, h, msk, new in writes:
            torch.testing.assert_close(new, _write_loop(model.memory.writer, m, h, msk),
                                       atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(writes[1][0], writes[0][3])      # M_{t+1} feeds segment t+1
        torch.testing.assert_close(out.state["mem"], writes[1][3])


def test_segments_see_each_other_only_through_the_memory():
    """Changing a token of segment 0 changes segment 1 (through the memory); with the readers'
    output projections zeroed it does not; a call over two segments equals two calls."""
    model = _model().eval()
    ids = torch.randint(0, V, (1, 8))
    other = ids.clone()
    other[0, 0] = (other[0, 0] + 1) % V
    with torch.no_grad():
        a, b = model.forward_segment(ids).logits, model.forward_segment(other).logits
        assert not torch.allclose(a[:, 4:], b[:, 4:])
        torch.testing.assert_close(stream_logits(model, ids, 4)[0], a, atol=1e-5, rtol=1e-5)
        for r in model.memory.read_outs:
            r.weight.zero_()
            r.bias.zero_()
        a, b = model.forward_segment(ids).logits, model.forward_segment(other).logits
    torch.testing.assert_close(a[:, 4:], b[:, 4:], atol=0, rtol=0)


def test_a_large_forgetting_bias_keeps_each_slot():
    """b_f → ∞: every slot attends only to itself, m' = LN(W_o v(m)) whatever the segment."""
    model = _model().eval()
    with torch.no_grad():
        model.memory.writer.forget_bias.fill_(1e4)
        w = model.memory.writer
        m0 = model.memory.memory0.expand(1, -1, -1)
        want = w.norm(w.o(w.v(m0)))
        for seg in (torch.randint(0, V, (1, 4)), torch.randint(0, V, (1, 4))):
            torch.testing.assert_close(model.forward_segment(seg).state["mem"], want)


@pytest.mark.parametrize("mem,field", [
    ({"slots": 0, "segment": 4}, "model.memory.slots"),
    ({"slots": 2, "segment": 0}, "model.memory.segment"),
    ({"slots": 2, "segment": 4, "bptt": 0}, "model.memory.bptt"),
    ({"slots": 2, "segment": 4, "heads": 3}, "model.memory.heads"),
])
def test_bad_options_are_one_line_errors(mem, field):
    with pytest.raises(ConfigError) as e:
        tevo.build_model({"arch": "gpt", "vocab_size": V, "d_model": 16, "n_layers": 1,
                          "mixer": {"name": "softmax", "heads": 2}, "position": "rope",
                          "memory": {"name": "memformer", **mem}})
    assert str(e.value).startswith(field) and "\n" not in str(e.value)
