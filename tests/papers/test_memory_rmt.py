"""Recurrent Memory Transformer (Bulatov et al., 2022): read/write memory tokens around each
segment, the write outputs are the next memory, BPTT reaches exactly D − 1 segments back, and
the memory carries information across segments (a copy task a memoryless model cannot do)."""
import math

import pytest
import torch
import torch.nn.functional as F

import tevo
from tevo.errors import ConfigError
from tevo.nn.context import MixerContext

V = 29


def _model(bptt=1, segment=4, mem_tokens=3, n_layers=2, d=16, vocab=V, **kw):
    torch.manual_seed(0)
    cfg = {"arch": "gpt", "vocab_size": vocab, "d_model": d, "n_layers": n_layers, "max_len": 32,
           "mixer": {"name": "softmax", "heads": 2}, "position": "learned",
           "memory": {"name": "rmt", "mem_tokens": mem_tokens, "segment": segment, "bptt": bptt},
           **kw}
    return tevo.build_model(cfg)


def test_one_segment_is_the_transformer_on_read_memory_tokens_write_memory():
    """Ō = Transformer([H^mem ∘ H^0 ∘ H^mem]) at local positions 0..2k+s−1; logits are the
    segment rows, the next memory the (final-normed) write rows; in a second segment the memory
    is those rows."""
    model = _model().eval()
    ids = torch.randint(0, V, (2, 8))
    with torch.no_grad():
        o1 = model.forward_segment(ids[:, :4])
        o2 = model.forward_segment(ids[:, 4:], o1.state)
        both = model.forward_segment(ids)                       # two segments in one call
        mem = model.memory.memory0.expand(2, -1, -1)
        for seg, out in ((ids[:, :4], o1), (ids[:, 4:], o2)):
            pos = torch.arange(10).expand(2, 10)
            x = model.embed_tokens(seg, pos[:, 3:7])              # positions 3..6
            h = torch.cat([mem, x, mem], 1)
            for i, blk in enumerate(model.blocks.blocks):
                h, _ = blk(h, MixerContext(causal=True, positions=pos, pos=model.pos, layer=i,
                                           n_layers=2))
            h = model.norm(h)
            torch.testing.assert_close(out.logits, model.head(h[:, 3:7]), atol=1e-5, rtol=1e-5)
            mem = h[:, -3:]
            torch.testing.assert_close(out.state["mem"], mem, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both.logits, torch.cat([o1.logits, o2.logits], 1), atol=1e-5,
                               rtol=1e-5)
    assert not o2.state["mem"].requires_grad


@pytest.mark.parametrize("bptt,reached", [(3, {3, 2, 1}), (1, {3}), (4, {3, 2, 1, 0})])
def test_bptt_depth_three_reaches_segment_t_minus_2_and_one_does_not(bptt, reached):
    """Four segments in one call, the loss on the last one (t = 3): its gradient reaches the
    token embeddings of segments t … t−D+1 through the memory, and no earlier one."""
    model = _model(bptt=bptt).train()
    embedded = []
    model.drop.register_forward_hook(lambda mod, inp, out: embedded.append(out))
    ids = torch.randint(0, V, (2, 16))
    mem = model.forward_segment(ids[:, :4]).state                 # a carried (detached) memory
    embedded.clear()
    out = model.forward_segment(ids, mem)
    assert len(embedded) == 4
    grads = torch.autograd.grad(out.logits[:, 12:].sum(), embedded, allow_unused=True)
    got = {s for s, g in enumerate(grads) if g is not None and g.abs().sum() > 0}
    assert got == reached


def test_the_learned_initial_memory_is_trained_and_a_fully_padded_segment_keeps_the_memory():
    model = _model(bptt=1).train()
    ids = torch.randint(0, V, (2, 8))
    out = model.forward_segment(ids)
    g, = torch.autograd.grad(out.logits[:, :4].sum(), [model.memory.memory0])
    assert g.abs().sum() > 0
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[0, :4] = False
    with torch.no_grad():
        padded = model.forward_segment(ids, attention_mask=mask)
        alone = model.forward_segment(ids[:1, 4:])
    torch.testing.assert_close(padded.logits[0, 4:], alone.logits[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded.state["mem"][:1], alone.state["mem"], atol=1e-5, rtol=1e-5)


def test_memory_carries_a_copy_across_segments():
    """Blocks [r1 r2 | r1 r2] (random letters of 8), segments of 2: at the first token of the
    second segment the next token r2 is independent of everything that segment shows, so a model
    without memory cannot beat ln 8 there; trained with BPTT over the two segments (150 steps),
    RMT predicts it from the memory tokens written at the end of the first segment."""
    torch.manual_seed(0)
    model = _model(bptt=2, segment=2, mem_tokens=2, n_layers=2, d=32, vocab=8).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def batch(bs):
        r = torch.randint(0, 8, (bs, 2))
        return torch.cat([r, r], 1)                               # (bs, 4)

    for _ in range(150):
        x = batch(32)
        loss = F.cross_entropy(model.forward_segment(x).logits[:, 2], x[:, 3])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        x = batch(512)
        got = F.cross_entropy(model.forward_segment(x).logits[:, 2], x[:, 3]).item()
        alone = F.cross_entropy(model.forward_segment(x[:, 2:]).logits[:, 0], x[:, 3]).item()
    assert got < 0.25 * math.log(8) and alone > 0.9 * math.log(8), (got, alone)


@pytest.mark.parametrize("mem,field", [
    ({"mem_tokens": 0, "segment": 4}, "model.memory.mem_tokens"),
    ({"mem_tokens": 2, "segment": None}, "model.memory.segment"),
    ({"mem_tokens": 2, "segment": 4, "bptt": 0}, "model.memory.bptt"),
    ({"mem_tokens": 20, "segment": 4}, "model.max_len"),
])
def test_bad_options_are_one_line_errors(mem, field):
    with pytest.raises(ConfigError) as e:
        tevo.build_model({"arch": "gpt", "vocab_size": V, "d_model": 16, "n_layers": 1,
                          "max_len": 32, "mixer": {"name": "softmax", "heads": 2},
                          "memory": {"name": "rmt", **mem}})
    assert str(e.value).startswith(field) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="^model.arch"):
        tevo.build_model({"arch": "bert", "vocab_size": V, "d_model": 16, "n_layers": 1,
                          "memory": {"name": "rmt", "mem_tokens": 2, "segment": 4}})
