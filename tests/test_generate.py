"""Generation: cached decoding equals re-running the whole context (greedy and seeded
sampling, with left padding, across a full learned-position window); top-k / top-p filters;
bad inputs are one-line errors."""
from __future__ import annotations

import pytest
import torch

import tevo
from tevo.errors import InputError
from tevo.inference.generate import filter_logits, generate
from tevo.registry import INFERENCE


def _model(position="learned", max_len=24):
    torch.manual_seed(0)
    return tevo.build_model("gpt2", n_layers=2, d_model=32, vocab_size=40, max_len=max_len,
                            dropout=0.0, mixer={"name": "softmax", "heads": 4},
                            position=position).eval()


@pytest.mark.parametrize("position", ["learned", "sinusoidal"])
def test_cached_and_uncached_greedy_give_the_same_tokens(position):
    model = _model(position)
    assert INFERENCE.get("generate").obj is generate
    ids = torch.randint(0, 40, (3, 6))
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, :2] = False                                   # left padding
    mask[2, :4] = False
    for m in (None, mask):
        # 30 new tokens run past max_len=24: the learned model's window slides
        a = generate(model, ids, 30, greedy=True, use_cache=True, attention_mask=m)
        b = generate(model, ids, 30, greedy=True, use_cache=False, attention_mask=m)
        assert a.shape == (3, 36)
        assert torch.equal(a, b)
        assert torch.equal(a[:, :6], ids)
    # a padded row continues as the same prompt without padding would
    c = generate(model, ids[2:, 4:], 10, greedy=True)
    d = generate(model, ids, 10, greedy=True, attention_mask=mask)
    assert torch.equal(c[:, 2:], d[2:, 6:])


def test_seeded_sampling_is_the_same_with_and_without_cache():
    model = _model()
    ids = torch.randint(0, 40, (2, 4))
    kw = dict(temperature=0.9, top_k=10, top_p=0.9)
    a = generate(model, ids, 15, generator=torch.Generator().manual_seed(3), use_cache=True, **kw)
    b = generate(model, ids, 15, generator=torch.Generator().manual_seed(3), use_cache=False, **kw)
    c = generate(model, ids, 15, generator=torch.Generator().manual_seed(4), **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_top_k_and_top_p_filters():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1]]))
    k2 = filter_logits(logits, top_k=2)
    assert torch.isfinite(k2).tolist() == [[True, True, False, False]]
    p = filter_logits(logits, top_p=0.7)                  # 0.5 + 0.25 reaches 0.7
    assert torch.isfinite(p).tolist() == [[True, True, False, False]]
    p = filter_logits(logits, top_p=0.75)
    assert torch.isfinite(p).tolist() == [[True, True, False, False]]
    p = filter_logits(logits, top_p=0.76)
    assert torch.isfinite(p).tolist() == [[True, True, True, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.01)).sum() == 1
    model = _model()
    out = generate(model, torch.zeros(1, 3, dtype=torch.long), 20, top_k=1)
    assert torch.equal(out, generate(model, torch.zeros(1, 3, dtype=torch.long), 20, greedy=True))


def test_eos_stops_rows():
    model = _model()
    ids = torch.randint(0, 40, (2, 3))
    first = generate(model, ids, 1, greedy=True)[:, -1]
    out = generate(model, ids, 10, greedy=True, eos_id=int(first[0]))
    assert (out[0, 3:] == first[0]).all()


def test_bad_generation_inputs_are_one_line_errors():
    model = _model(max_len=8)
    with pytest.raises(InputError, match="longer than the model's context of 8"):
        generate(model, torch.zeros(1, 9, dtype=torch.long), 2)
    with pytest.raises(InputError, match="outside the vocabulary"):
        generate(model, torch.tensor([[1, 2, 99]]), 2)
    with pytest.raises(InputError, match="empty"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 2)
    with pytest.raises(InputError, match="top_p"):
        generate(model, torch.zeros(1, 2, dtype=torch.long), 2, top_p=1.5)
    bert = tevo.build_model("bert", n_layers=1, d_model=16, vocab_size=20, max_len=16,
                            mixer={"name": "softmax", "heads": 2})
    with pytest.raises(InputError, match="causal language model"):
        generate(bert, torch.zeros(1, 2, dtype=torch.long), 2)


def test_context_window_defaults_to_the_training_length():
    model = _model("sinusoidal", max_len=16)
    long = torch.randint(0, 40, (2, 30))
    a = generate(model, long, 5, greedy=True)                 # cropped to the last 16 tokens
    b = generate(model, long[:, -16:], 5, greedy=True)
    assert torch.equal(a[:, -5:], b[:, -5:])
    c = generate(model, long, 5, greedy=True, context=None, use_cache=True)
    d = generate(model, long, 5, greedy=True, context=None, use_cache=False)
    assert torch.equal(c, d)                                  # no window: the whole context
    with pytest.raises(InputError, match="context must be"):
        generate(_model("learned", max_len=16), long[:, :4], 2, context=32)
