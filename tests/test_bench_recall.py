"""`tevo bench recall`: seeds per point with the best mean learning rate, resumable runs, bad
options as one-line errors, and the per-claim sentences following the numbers (a claim the
numbers contradict must read "not reproduced")."""
from __future__ import annotations

import pytest

import tevo
from tevo.bench import recall as R
from tevo.errors import ConfigError


def test_recall_runs_seeds_and_keeps_best_mean_lr(tmp_path):
    (rep,) = tevo.bench.run("recall", mixers=["softmax"], widths=[16], lengths=[16], kv_pairs=2,
                            lrs=[1e-3, 1e-2], seeds=2, steps=2, batch=4, eval_examples=8,
                            n_layers=1, heads=2, out=str(tmp_path))
    for task in ("mqar", "induction"):
        cell = rep.data["results"][task]["softmax"]["d=16 n=16"]
        runs = cell["runs"]
        assert sorted((r["lr"], r["seed"]) for r in runs) == [(1e-3, 0), (1e-3, 1), (1e-2, 0),
                                                             (1e-2, 1)]
        means = {lr: sum(r["accuracy"] for r in runs if r["lr"] == lr) / 2 for lr in (1e-3, 1e-2)}
        assert cell["best_lr"] == max(means, key=means.get)
        assert cell["mean"] == pytest.approx(means[cell["best_lr"]])
        assert len(cell["accuracies"]) == 2 and 0.0 <= cell["mean"] <= 1.0
    assert rep.data["tasks"]["mqar"]["num_kv_pairs"] == 2
    md = (tmp_path / "recall.md").read_text()
    assert "Zoology's claims against this run" in md and "not measured" in md
    assert not (tmp_path / "recall.runs.jsonl").exists()      # a finished study leaves no log


def test_recall_resume_reuses_finished_runs(tmp_path, monkeypatch):
    real = R._one_run
    calls = []

    def interrupted(task, name, d, *a, **k):
        calls.append(d)
        return None if d == 24 else real(task, name, d, *a, **k)

    monkeypatch.setattr(R, "_one_run", interrupted)
    kw = dict(mixers=["softmax"], tasks=["mqar"], widths=[16, 24], lengths=[16], kv_pairs=2,
              seeds=1, steps=2, batch=4, eval_examples=8, n_layers=1, heads=2,
              out=str(tmp_path))
    (rep,) = tevo.bench.run("recall", **kw)
    assert calls == [16, 24] and "d=24 n=16" not in rep.data["results"]["mqar"]["softmax"]
    assert (tmp_path / "recall.runs.jsonl").exists()         # interrupted: the log stays
    first = rep.data["results"]["mqar"]["softmax"]["d=16 n=16"]["mean"]

    monkeypatch.setattr(R, "_one_run", lambda task, name, d, *a, **k:
                        calls.append(d) or real(task, name, d, *a, **k))
    (rep,) = tevo.bench.run("recall", resume=True, **kw)
    assert calls == [16, 24, 24]                             # d=16 was not trained again
    res = rep.data["results"]["mqar"]["softmax"]
    assert res["d=16 n=16"]["mean"] == first and "d=24 n=16" in res
    assert any("reused" in n for n in rep.notes)
    assert not (tmp_path / "recall.runs.jsonl").exists()


@pytest.mark.parametrize("opt, value, msg", [("seeds", 0, "recall.seeds"),
                                             ("widths", [0], "recall.widths"),
                                             ("lrs", [-1.0], "recall.lrs"),
                                             ("kv_pairs", -1, "recall.kv_pairs")])
def test_recall_bad_options_are_one_line_config_errors(tmp_path, opt, value, msg):
    with pytest.raises(ConfigError) as e:
        tevo.bench.run("recall", mixers=["softmax"], out=str(tmp_path), **{opt: value})
    assert msg in str(e.value) and "\n" not in str(e.value)


def _res(acc: dict) -> dict:
    """{mixer: {width: [per-seed accuracies]}} → the study's result layout at n = 64."""
    return {m: {f"d={d} n=64": {"accuracies": a} for d, a in ws.items()}
            for m, ws in acc.items()}


W = [32, 64, 128]


def _grid(softmax, h3, hyena, mamba, rwkv):
    return _res({"softmax": dict(zip(W, softmax)), "h3": dict(zip(W, h3)),
                 "hyena": dict(zip(W, hyena)), "mamba": dict(zip(W, mamba)),
                 "rwkv": dict(zip(W, rwkv))})


def test_claims_follow_the_numbers():
    att = [[1.0, 0.99, 1.0]] * 3
    conv = [[0.1, 0.12, 0.11], [0.5, 0.52, 0.48], [0.9, 0.92, 0.91]]
    rec = [[0.5, 0.52, 0.51], [0.8, 0.79, 0.81], [0.95, 0.96, 0.94]]
    s = R.claims(_grid(att, conv, conv, rec, rec), W, 64)
    assert len(s) == 3
    assert all(": reproduced" in x for x in s), s

    # attention below the threshold at the smallest width: claim 1 is not reproduced
    weak = [[0.5, 0.6, 0.55]] + att[1:]
    s = R.claims(_grid(weak, conv, conv, rec, rec), W, 64)
    assert ": not reproduced" in s[0] and "d=32" in s[0]
    assert len(s) == 4 and "does not solve the task in this run" in s[3]

    # gated convolutions as good as attention everywhere: they do not "need more width", and
    # recurrences cannot sit between them and attention
    s = R.claims(_grid(att, att, att, rec, rec), W, 64)
    assert ": not reproduced" in s[1] and ": not reproduced" in s[2]

    # recurrences no better than the convolutions: claim 3 not reproduced
    s = R.claims(_grid(att, conv, conv, conv, conv), W, 64)
    assert ": reproduced" in s[1] and ": not reproduced" in s[2]

    # only one gated convolution fits the claim: partly
    s = R.claims(_grid(att, conv, att, rec, rec), W, 64)
    assert "partly reproduced" in s[1]


def test_claims_need_seeds_to_call_a_difference():
    one = lambda rows: [[r[0]] for r in rows]                      # noqa: E731 (one seed each)
    att = [[1.0, 0.99, 1.0]] * 3
    conv = [[0.1, 0.12, 0.11], [0.5, 0.52, 0.48], [0.9, 0.92, 0.91]]
    rec = [[0.5, 0.52, 0.51], [0.8, 0.79, 0.81], [0.95, 0.96, 0.94]]
    s = R.claims(_grid(one(att), one(conv), one(conv), one(rec), one(rec)), W, 64)
    assert ": reproduced" in s[0]                          # a threshold, not a comparison
    assert ": not reproduced" in s[1] and ": not reproduced" in s[2]
    assert "no measurable difference" in s[1]
    # overlapping seeds: no measurable difference either
    noisy = [[0.2, 0.9, 0.5], [0.3, 0.95, 0.6], [0.4, 1.0, 0.7]]
    s = R.claims(_grid(att, noisy, noisy, rec, rec), W, 64)
    assert ": not reproduced" in s[1]
    # a missing mixer is "not measured", never a verdict
    g = _grid(att, conv, conv, rec, rec)
    del g["mamba"], g["rwkv"]
    assert "not measured" in R.claims(g, W, 64)[2]


def test_difference_interval():
    d = R.difference([1.0, 1.0, 1.0], [0.5, 0.5, 0.5])
    assert d["measurable"] and d["lo"] == d["hi"] == pytest.approx(0.5)
    d = R.difference([0.2, 0.8], [0.5, 0.5])
    assert not d["measurable"] and d["lo"] < 0 < d["hi"]
    assert not R.difference([1.0], [0.0])["measurable"]
