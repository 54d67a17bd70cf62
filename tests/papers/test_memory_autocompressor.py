"""AutoCompressor (Chevalier et al., 2023): each segment runs as [σ_{<i} ∘ S_i ∘ ⟨sum⟩], its
summary vectors σ_i are the outputs at ⟨sum⟩ and accumulate for all later segments (up to
max_summaries), gradients flow through the summaries of the last D segments, and a call split
any way over segments gives the same logits."""
import pytest
import torch

import tevo
from tevo.errors import ConfigError
from tevo.memory.xl import stream_logits
from tevo.nn.context import MixerContext

V = 23


def _model(summary=2, segment=4, bptt=1, max_summaries=16, **kw):
    torch.manual_seed(0)
    return tevo.build_model({"arch": "gpt", "vocab_size": V, "d_model": 16, "n_layers": 2,
                             "max_len": 32, "mixer": {"name": "softmax", "heads": 2},
                             "position": "learned",
                             "memory": {"name": "autocompressor", "summary": summary,
                                        "segment": segment, "bptt": bptt,
                                        "max_summaries": max_summaries}, **kw})


def test_summaries_accumulate_and_each_segment_is_the_transformer_on_summaries_segment_sum():
    model = _model().eval()
    ids = torch.randint(0, V, (2, 12))
    with torch.no_grad():
        out = model.forward_segment(ids)                        # three segments of 4
        mem = torch.zeros(2, 0, 16)
        for s in range(0, 12, 4):
            M = mem.shape[1]
            pos = torch.arange(M + 6).expand(2, -1)
            x = model.embed_tokens(ids[:, s:s + 4], pos[:, M:M + 4])
            h = torch.cat([mem, x, model.memory.sum_tokens.expand(2, -1, -1)], 1)
            h, _ = model.blocks(h, MixerContext(causal=True, positions=pos, pos=model.pos))
            h = model.norm(h)
            torch.testing.assert_close(out.logits[:, s:s + 4], model.head(h[:, M:M + 4]),
                                       atol=1e-5, rtol=1e-5)
            mem = torch.cat([mem, h[:, -2:]], 1)                # σ_{<i+1} = σ_{<i} ∘ σ_i
        torch.testing.assert_close(out.state["mem"], mem, atol=1e-5, rtol=1e-5)
        assert out.state["mem"].shape[1] == 6
        split, _ = stream_logits(model, ids, 4)                 # one segment per call
        torch.testing.assert_close(split, out.logits, atol=1e-5, rtol=1e-5)


def test_at_most_max_summaries_are_kept_oldest_first_out():
    model = _model(max_summaries=4).eval()
    ids = torch.randint(0, V, (1, 16))
    with torch.no_grad():
        full = _model(max_summaries=16).eval().forward_segment(ids).state["mem"]   # 8 vectors
        kept = model.forward_segment(ids[:, :8]).state
        assert kept["mem"].shape[1] == 4
        later = model.forward_segment(ids[:, 8:12], kept).state["mem"]
    assert full.shape[1] == 8 and later.shape[1] == 4
    torch.testing.assert_close(later[:, :2], kept["mem"][:, 2:])   # σ_2 kept, σ_1 dropped


@pytest.mark.parametrize("bptt,reached", [(3, {3, 2, 1}), (1, {3})])
def test_gradients_reach_the_last_d_segments_through_the_summaries(bptt, reached):
    model = _model(bptt=bptt).train()
    embedded = []
    model.drop.register_forward_hook(lambda mod, inp, out: embedded.append(out))
    ids = torch.randint(0, V, (1, 16))
    out = model.forward_segment(ids)
    grads = torch.autograd.grad(out.logits[:, 12:].sum(), embedded, allow_unused=True)
    assert {s for s, g in enumerate(grads) if g is not None and g.abs().sum() > 0} == reached


@pytest.mark.parametrize("mem,field", [
    ({"summary": 0, "segment": 4}, "model.memory.summary"),
    ({"summary": 2, "segment": 0}, "model.memory.segment"),
    ({"summary": 2, "segment": 4, "bptt": 0}, "model.memory.bptt"),
    ({"summary": 4, "segment": 4, "max_summaries": 2}, "model.memory.max_summaries"),
    ({"summary": 4, "segment": 4, "max_summaries": 40}, "model.max_len"),
])
def test_bad_options_are_one_line_errors(mem, field):
    with pytest.raises(ConfigError) as e:
        tevo.build_model({"arch": "gpt", "vocab_size": V, "d_model": 16, "n_layers": 1,
                          "max_len": 32, "mixer": {"name": "softmax", "heads": 2},
                          "memory": {"name": "autocompressor", **mem}})
    assert str(e.value).startswith(field) and "\n" not in str(e.value)
