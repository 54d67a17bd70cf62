"""`tevo bench context`: the k-context queries are built as the issue says (the key in one of k
windows of the training length, the query after them), truncation to the last window sees the
key only when it sits in the last context (a share 1/k), bad options are one-line errors, and at
a smoke budget the report has the table, the plot and one sentence per claim."""
from __future__ import annotations

import json

import pytest
import torch

from tevo.bench.context import check_options, make_queries, truncated_input
from tevo.errors import ConfigError


@pytest.mark.parametrize("noise", [True, False])
def test_queries_hold_the_key_in_exactly_one_context(noise):
    k, P, V, L = 4, 2, 16, 32
    ex = make_queries(k, P, V, L, 64, torch.Generator().manual_seed(0), noise)
    for contexts, q, value, j in ex:
        assert len(contexts) == k and all(c.shape == (L - 2,) for c in contexts)
        assert 1 <= int(q) < V // 2 and V // 2 <= value < V
        where = [(i, t) for i, c in enumerate(contexts) for t in range(L - 2) if c[t] == q]
        assert where and all(i == j for i, _ in where) and len(where) == 1   # once, in context j
        i, t = where[0]
        assert t < 2 * P and t % 2 == 0 and int(contexts[j][t + 1]) == value  # a (key, value) pair
        for c in contexts:                                    # each context is a training block
            keys, vals = c[0:2 * P:2], c[1:2 * P:2]
            assert len(set(keys.tolist())) == P and len(set(vals.tolist())) == P
            assert bool(((keys >= 1) & (keys < V // 2)).all() and (vals >= V // 2).all())
            if not noise:
                assert bool((c[2 * P:] == 0).all())


def test_truncation_sees_the_key_only_in_the_last_context():
    for k in (2, 4, 8):
        ex = make_queries(k, 2, 16, 32, 400, torch.Generator().manual_seed(k))
        seen = [bool((truncated_input(c, q)[:-1] == q).any()) for c, q, _, _ in ex]
        assert seen == [j == k - 1 for _, _, _, j in ex]
        assert abs(sum(seen) / len(ex) - 1 / k) < 0.07           # the key is visible in ~1/k
        assert all(truncated_input(c, q).numel() == 31 for c, q, _, _ in ex)   # fits L = 32


def _opts(**kw):
    o = {"ks": [2, 4, 8], "length": 64, "pairs": 2, "vocab": 16, "d_model": 32, "n_layers": 2,
         "heads": 4, "init_std": 0.15, "steps": 10, "batch": 4, "lr": 3e-3, "examples": 4,
         "seeds": [0], "methods": ["truncate", "pcw", "nbce"]}
    o.update(kw)
    return o


@pytest.mark.parametrize("bad, name", [({"ks": [1, 2]}, "--ks"), ({"vocab": 6}, "--vocab"),
                                       ({"length": 9}, "--length"), ({"lr": 0.0}, "--lr"),
                                       ({"methods": ["pcw", "beam"]}, "--methods"),
                                       ({"d_model": 30}, "--d-model"),
                                       ({"init_std": -1.0}, "--init-std")])
def test_bad_options_are_one_line_config_errors(bad, name):
    check_options(_opts())
    with pytest.raises(ConfigError) as e:
        check_options(_opts(**bad))
    assert str(e.value).startswith(name) and "\n" not in str(e.value)


@pytest.mark.slow        # trains a model, then three methods at every k
def test_bench_context_quick_writes_the_table(tmp_path):
    pytest.importorskip("matplotlib")
    from tevo.cli import main
    assert main(["bench", "context", "--quick", "--ks", "2,4", "--steps", "5",
                 "--examples", "4", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "context.md").read_text()
    assert "Smoke test, not a result" in md and "| k = 4 |" in md
    assert "Claim (pcw)" in md and "Claim (nbce)" in md and "Truncation to the last window" in md
    rows = json.loads((tmp_path / "context.json").read_text())["results"]["rows"]
    assert {(r["method"], r["k"]) for r in rows} == {(m, k) for m in ("truncate", "pcw", "nbce")
                                                      for k in (1, 2, 4)}
    assert all(0 <= r["accuracy"] <= 1 for r in rows)
