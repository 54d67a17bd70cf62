"""Parallel Context Windows (Ratner et al., 2023) and Structured Prompting (Hao et al., 2022):
one window / one group is the base model; windows share position ids and do not see each other
(each window's logits are the base model's on that window alone; the task's prediction does
not depend on the order of the windows); M copies of one demonstration group give the test
input exactly one group's attention (the 1/M rescale); cached == uncached; bad input is one
line."""
from __future__ import annotations

import pytest
import torch

import tevo
from tevo.errors import ConfigError, InputError
from tevo.inference.parallel_context import (parallel_layout, pcw_generate,
                                             structured_generate)
from tevo.registry import INFERENCE


def _model(position="rope", mixer=None, max_len=48):
    torch.manual_seed(0)
    return tevo.build_model("gpt2", n_layers=2, d_model=16, vocab_size=30, max_len=max_len,
                            dropout=0.0, mixer=mixer or {"name": "softmax", "heads": 2},
                            position=position).eval()


def _seq(n, seed):
    return torch.randint(0, 30, (n,), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _base_steps(model, prefix, toks):
    """The base model's last logits after prefix, prefix + toks[:1], ..."""
    out, seq = [], prefix
    for t in range(len(toks)):
        out.append(model(seq[None]).logits[0, -1])
        seq = torch.cat([seq, toks[t:t + 1]])
    return torch.stack(out)


@pytest.mark.parametrize("position", ["rope", "learned", "alibi"])
def test_pcw_windows_are_independent_and_one_window_is_the_base_model(position):
    assert INFERENCE.get("pcw").obj is pcw_generate
    model = _model(position)
    w, q = _seq(10, 1), _seq(3, 2)
    for cache in (True, False):
        toks, lg = pcw_generate(model, [w], q, 5, greedy=True, use_cache=cache,
                                return_logits=True)
        torch.testing.assert_close(lg, _base_steps(model, torch.cat([w, q]), toks),
                                   atol=1e-5, rtol=0)
    a, b = _seq(7, 3), _seq(10, 4)
    ids, pos, am, n_win, N = parallel_layout([a, b], q)
    assert pos[0].tolist() == list(range(7)) + list(range(10)) + [10, 11, 12] and N == 10
    with torch.no_grad():
        full = model(ids, positions=pos, attn_mask=am).logits[0]
        torch.testing.assert_close(full[7:17], model(b[None]).logits[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(full[:7], model(a[None]).logits[0], atol=1e-5, rtol=0)
    # the task attends to both windows, whose order does not matter (shared positions)
    t_ab, l_ab = pcw_generate(model, [a, b], q, 4, greedy=True, return_logits=True)
    t_ba, l_ba = pcw_generate(model, [b, a], q, 4, greedy=True, return_logits=True)
    torch.testing.assert_close(l_ab, l_ba, atol=1e-5, rtol=0)
    _, l_b = pcw_generate(model, [b], q, 1, greedy=True, return_logits=True)
    assert not torch.allclose(l_ab[0], l_b[0], atol=1e-3)          # window a is read
    t_nc, l_nc = pcw_generate(model, [a, b], q, 4, greedy=True, use_cache=False,
                              return_logits=True)
    assert torch.equal(t_ab, t_nc)
    torch.testing.assert_close(l_ab, l_nc, atol=1e-5, rtol=0)


@pytest.mark.parametrize("position", ["rope", "alibi"])
def test_structured_prompting_rescales_M_copies_to_one_group(position):
    assert INFERENCE.get("structured_prompting").obj is structured_generate
    model = _model(position)
    g, q = _seq(9, 5), _seq(4, 6)
    one_t, one = structured_generate(model, [g], q, 4, greedy=True, return_logits=True)
    torch.testing.assert_close(one, _base_steps(model, torch.cat([g, q]), one_t),
                               atol=1e-5, rtol=0)
    for cache in (True, False):
        t3, three = structured_generate(model, [g, g, g], q, 4, greedy=True,
                                        use_cache=cache, return_logits=True)
        assert torch.equal(t3, one_t)
        torch.testing.assert_close(three, one, atol=1e-5, rtol=0)
    # without the 1/M rescale (PCW's plain mask) three copies weigh three times
    _, plain = pcw_generate(model, [g, g, g], q, 1, greedy=True, return_logits=True)
    assert not torch.allclose(plain[0], one[0], atol=1e-3)
    # groups of different lengths are right-aligned: order still does not matter
    h = _seq(5, 7)
    _, gh = structured_generate(model, [g, h], q, 3, greedy=True, return_logits=True)
    _, hg = structured_generate(model, [h, g], q, 3, greedy=True, return_logits=True)
    torch.testing.assert_close(gh, hg, atol=1e-5, rtol=0)


def test_parallel_context_bad_input_is_one_line():
    model = _model("learned", max_len=16)
    q = torch.tensor([1, 2])
    cases = [(lambda: pcw_generate(model, [], q, 2), InputError),
             (lambda: structured_generate(model, [], q, 2), InputError),
             (lambda: pcw_generate(model, [torch.arange(20) % 30], q, 2), InputError),
             (lambda: pcw_generate(model, [torch.arange(10)], q, 8), InputError),
             (lambda: pcw_generate(_model("rope", mixer={"name": "linear"}), [q], q, 2),
              ConfigError)]
    for fn, err in cases:
        with pytest.raises(err) as e:
            fn()
        assert "\n" not in str(e.value)
