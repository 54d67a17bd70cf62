"""Conformance for every registered segment memory (``model.memory``): inside a tiny causal LM
built with the entry's ``tiny`` options, over consecutive segments of a stream."""
from __future__ import annotations

import pytest
import torch

import tevo
from tevo.registry import MEMORIES

V, SEG = 41, 6


def _model(name: str):
    return tevo.build_model({
        "arch": "gpt", "vocab_size": V, "d_model": 16, "n_layers": 2, "max_len": 64,
        "mixer": {"name": "softmax", "heads": 2}, "position": "rope",
        "memory": {"name": name, **MEMORIES.get(name).tiny}})


def _stream(model, ids, mask=None):
    mem, outs = None, []
    for s in range(0, ids.shape[1], SEG):
        o = model.forward_segment(ids[:, s:s + SEG], mem,
                                  attention_mask=None if mask is None else mask[:, s:s + SEG])
        outs.append(o)
        mem = o.state
    return outs


@pytest.mark.parametrize("name", MEMORIES.names())
def test_memory_segments_shape_finite_grad(name):
    model = _model(name).train()
    ids = torch.randint(0, V, (2, 3 * SEG))
    outs = _stream(model, ids)
    for o in outs:
        assert o.logits.shape == (2, SEG, V) and torch.isfinite(o.logits).all()
    # every segment's loss: a learned initial memory (rmt) is used by the first segment only
    sum(o.logits.logsumexp(-1).mean() + o.aux_loss for o in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient reaches {missing}"
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert all(torch.isfinite(o.logits.float()).all() for o in _stream(model, ids))


@pytest.mark.parametrize("name", MEMORIES.names())
def test_memory_batch_independence_and_segment_aligned_left_padding(name):
    model = _model(name).eval()
    ids = torch.randint(0, V, (2, 3 * SEG))
    with torch.no_grad():
        both = torch.cat([o.logits for o in _stream(model, ids)], 1)
        one = torch.cat([o.logits for o in _stream(model, ids[:1])], 1)
        torch.testing.assert_close(both[:1], one, atol=2e-5, rtol=1e-4)
        # row 0 gets one whole segment of left padding: its real tokens keep their outputs
        padded = torch.cat([torch.zeros(2, SEG, dtype=ids.dtype), ids], 1)
        mask = torch.ones(2, 4 * SEG, dtype=torch.bool)
        mask[0, :SEG] = False
        padded[1, :SEG] = ids[1, :SEG]
        got = torch.cat([o.logits for o in _stream(model, padded, mask)], 1)
    torch.testing.assert_close(got[0, SEG:], both[0], atol=2e-5, rtol=1e-4)
