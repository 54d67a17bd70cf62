"""NBCE (Su, 2023): one context is the base model; n contexts follow the post's rule
log p = (β+1)·pool_k log p(T|S_k) − β·log p(T), checked against a slow loop that runs every
context + question unpadded and uncached; bad inputs are one-line errors."""
from __future__ import annotations

import pytest
import torch

import tevo
from tevo.errors import ConfigError, InputError
from tevo.inference.generate import generate
from tevo.inference.nbce import nbce_generate
from tevo.registry import INFERENCE


def _model(position="rope"):
    torch.manual_seed(0)
    return tevo.build_model("gpt2", n_layers=2, d_model=16, vocab_size=30, max_len=32,
                            dropout=0.0, mixer={"name": "softmax", "heads": 2},
                            position=position).eval()


def _logp(model, ids):
    return model(ids[None]).logits[0, -1].float().log_softmax(-1)


@pytest.mark.parametrize("use_cache", [True, False])
def test_nbce_one_context_equals_the_base_model(use_cache):
    assert INFERENCE.get("nbce").obj is nbce_generate
    model = _model()
    g = torch.Generator().manual_seed(1)
    ctx, q = torch.randint(0, 30, (9,), generator=g), torch.randint(0, 30, (4,), generator=g)
    toks, lp = nbce_generate(model, [ctx], q, 6, greedy=True, use_cache=use_cache,
                             return_logprobs=True)
    base = generate(model, torch.cat([ctx, q])[None], 6, greedy=True)[0, 13:]
    assert torch.equal(toks, base)
    seq = torch.cat([ctx, q])
    for t in range(6):
        torch.testing.assert_close(lp[t], _logp(model, seq), atol=1e-5, rtol=0)
        seq = torch.cat([seq, toks[t:t + 1]])


@torch.no_grad()
def _reference(model, contexts, q, steps, beta, pooling):
    """The post's rule, one unpadded, uncached model call per context per step."""
    gen, out, chosen = [], [], None
    for _ in range(steps):
        tail = torch.tensor(gen, dtype=torch.long)
        free = _logp(model, torch.cat([q, tail]))
        per = torch.stack([_logp(model, torch.cat([c, q, tail])) for c in contexts])
        n = len(contexts)
        b = n - 1 if beta is None else beta
        if pooling == "average":
            pooled = per.mean(0)
        else:
            if chosen is None:
                ent = [-(p.exp() * p.clamp(-100, 0)).sum() for p in per]
                chosen = min(range(n), key=lambda k: float(ent[k]))
            pooled = per[chosen]
        m = ((1 + b) * pooled - b * free)
        m = torch.where(free > -100, m, pooled).log_softmax(-1)
        out.append(m)
        gen.append(int(m.argmax()))
    return torch.tensor(gen), torch.stack(out)


@pytest.mark.parametrize("pooling,beta", [("min_entropy", 0.25), ("average", None),
                                          ("average", 0.0)])
def test_nbce_matches_the_post_rule_with_cache(pooling, beta):
    model = _model()
    g = torch.Generator().manual_seed(2)
    contexts = [torch.randint(0, 30, (n,), generator=g) for n in (5, 11, 8)]
    q = torch.randint(0, 30, (3,), generator=g)
    ref_t, ref_lp = _reference(model, contexts, q, 5, beta, pooling)
    for cache in (True, False):
        toks, lp = nbce_generate(model, contexts, q, 5, beta=beta, pooling=pooling,
                                 greedy=True, use_cache=cache, return_logprobs=True)
        assert torch.equal(toks, ref_t)
        torch.testing.assert_close(lp, ref_lp, atol=1e-4, rtol=0)


def test_nbce_identical_contexts_average_without_beta_is_one_context():
    model = _model()
    ctx, q = torch.arange(7) % 30, torch.tensor([3, 4])
    _, one = nbce_generate(model, [ctx], q, 3, greedy=True, return_logprobs=True)
    _, many = nbce_generate(model, [ctx] * 3, q, 3, beta=0.0, pooling="average", greedy=True,
                            return_logprobs=True)
    torch.testing.assert_close(one, many, atol=1e-5, rtol=0)
    # the naive-Bayes β = n − 1 counts the same evidence n times: not one context
    _, nb = nbce_generate(model, [ctx] * 3, q, 3, pooling="average", greedy=True,
                          return_logprobs=True)
    assert not torch.allclose(one, nb, atol=1e-3)


def test_nbce_bad_input_is_one_line():
    model = _model(position="learned")
    q = torch.tensor([1, 2])
    for kw, err in [(dict(contexts=[]), InputError),
                    (dict(contexts=[torch.arange(4)], pooling="max"), ConfigError),
                    (dict(contexts=[torch.arange(4)], beta=-1.0), ConfigError),
                    (dict(contexts=[torch.arange(40) % 30]), InputError)]:
        with pytest.raises(err) as e:
            nbce_generate(model, question=q, max_new_tokens=2, **kw)
        assert "\n" not in str(e.value)
