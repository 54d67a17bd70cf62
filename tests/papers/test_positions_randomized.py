"""Randomized positions: each forward draws sorted distinct positions from [0, L) (L larger
than the training length) and every hook of that pass uses them — in training and, as in the
paper, in evaluation; eval="plain" evaluates at 0..n-1, so the model equals its base encoding."""
import pytest
import torch

import tevo
from tevo.errors import ConfigError
from tevo.positions.randomized import RandomizedPosition


def test_randomized_samples_sorted_positions_in_training_and_evaluation():
    pe = RandomizedPosition(16, max_len=16, heads=2, base="rope", max_position=200).train()
    n = 12
    pos = torch.arange(n).expand(3, -1)
    x = torch.randn(3, n, 16)
    assert pe.embed(x, pos) is x                          # rope has no input hook
    mapped = pe.map(pos)
    assert torch.equal(mapped, pe._sample[:, :n])
    assert (mapped[:, 1:] > mapped[:, :-1]).all()          # sorted and distinct
    assert int(mapped.min()) >= 0 and int(mapped.max()) < 200
    assert not torch.equal(mapped[0], mapped[1])           # one sample per row
    # rotate uses the sample drawn by embed: same as rope at the mapped positions
    q, k = torch.randn(3, 2, n, 8), torch.randn(3, 2, n, 8)
    rq, rk = pe.rotate(q, k, pos, pos)
    bq, bk = pe.base.rotate(q, k, mapped, mapped)
    torch.testing.assert_close(rq, bq)
    # positions beyond the training length are seen: the largest drawn position is far past n
    tops = []
    for _ in range(50):
        pe.embed(x, pos)
        tops.append(int(pe.map(pos)[:, -1].min()))
    assert sum(tops) / len(tops) > 4 * n
    # evaluation samples too (the paper's test-time procedure): sorted, distinct, in [0, L),
    # fresh for each sequence, and reaching far past n
    pe.eval()
    tops, seen = [], set()
    for _ in range(20):
        pe.embed(x, pos)
        m = pe.map(pos)
        assert (m[:, 1:] > m[:, :-1]).all() and int(m.min()) >= 0 and int(m.max()) < 200
        tops.append(int(m[:, -1].min()))
        seen.add(tuple(m[0].tolist()))
    assert len(seen) > 15 and sum(tops) / len(tops) > 4 * n
    plain = RandomizedPosition(16, max_len=16, heads=2, base="rope", max_position=200,
                               eval="plain").eval()
    plain.embed(x, pos)
    assert torch.equal(plain.map(pos), pos)


def test_randomized_model_trains_on_random_and_evaluates_on_plain_positions():
    spec = {"arch": "gpt", "vocab_size": 40, "d_model": 16, "n_layers": 2, "max_len": 32,
            "mixer": {"name": "softmax", "heads": 2}}
    rnd = tevo.build_model({**spec, "position": {"name": "randomized", "base": "sinusoidal",
                                                  "max_position": 512, "eval": "plain"}})
    plain = tevo.build_model({**spec, "position": "sinusoidal"})
    plain.load_state_dict(rnd.state_dict(), strict=False)
    ids = torch.randint(0, 40, (2, 10))
    rnd.eval(), plain.eval()
    torch.testing.assert_close(rnd(ids).logits, plain(ids).logits)
    rnd.train()
    a, b = rnd(ids).logits, rnd(ids).logits
    assert not torch.allclose(a, b)                        # a new sample every forward


def test_randomized_default_evaluation_samples_and_refuses_cached_steps():
    """By default (the paper) evaluation also draws random positions: two evaluation passes
    differ, and neither equals the base encoding at 0..n-1; a KV-cached decode step, whose
    positions the prefill's sample cannot cover, is a one-line InputError naming eval=plain,
    while eval="plain" decodes with the cache exactly like the full pass."""
    from tevo.errors import InputError
    from tiny import cached_logits
    spec = {"arch": "gpt", "vocab_size": 40, "d_model": 16, "n_layers": 2, "max_len": 32,
            "mixer": {"name": "softmax", "heads": 2}}
    rnd = tevo.build_model({**spec, "position": {"name": "randomized", "base": "rope",
                                                  "max_position": 512}}).eval()
    plain = tevo.build_model({**spec, "position": "rope"}).eval()
    plain.load_state_dict(rnd.state_dict(), strict=False)
    ids = torch.randint(0, 40, (2, 10))
    a, b = rnd(ids).logits, rnd(ids).logits
    assert not torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, plain(ids).logits, atol=1e-4)
    with pytest.raises(InputError, match="eval=plain") as e:
        cached_logits(rnd, ids, prefill=4)
    assert "\n" not in str(e.value)
    det = tevo.build_model({**spec, "position": {"name": "randomized", "base": "rope",
                                                  "max_position": 512, "eval": "plain"}}).eval()
    torch.testing.assert_close(cached_logits(det, ids, prefill=4), det(ids).logits,
                               atol=2e-5, rtol=1e-4)


def test_randomized_bad_options():
    with pytest.raises(ConfigError, match="max_position"):
        RandomizedPosition(16, max_len=64, max_position=32)
    with pytest.raises(ConfigError, match="itself"):
        RandomizedPosition(16, base="randomized")
    with pytest.raises(ConfigError, match="hooks"):
        RandomizedPosition(16, base="permute")
    with pytest.raises(ConfigError, match="position.eval"):
        RandomizedPosition(16, eval="fixed")
