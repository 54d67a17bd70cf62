"""The claims table: verdicts come from paired intervals over seeds (a better mean inside the
noise is never a win), every training point is a Trainer run, and measured quantities (KV-cache
bytes, attention ranks) are measured, not assumed."""
from __future__ import annotations

import pytest

from tevo.bench import claims as C


def _results(values: dict) -> C.Results:
    R = C.Results([])
    R.values = {k: dict(enumerate(v)) for k, v in values.items()}
    R.summaries = {k: {i: {"tokens_per_second": 1.0} for i in range(len(v))}
                   for k, v in values.items()}
    return R


def test_claims_table_judges_from_paired_intervals():
    base = {"relu": [2.60, 2.70, 2.65], "gelu": [2.59, 2.69, 2.64]}
    win = {**base, **{g: [2.50, 2.61, 2.55] for g in C.GLUS}}           # ~0.09 better each seed
    assert C._judge_glu(_results(win))[1] == C.REPRODUCED
    # better on average but inside the noise: never a win
    noisy = {**base, **{g: [2.40, 2.80, 2.60] for g in C.GLUS}}
    assert C._judge_glu(_results(noisy))[1] == C.INCONCLUSIVE
    lose = {**win, "reglu": [2.70, 2.80, 2.75]}
    assert C._judge_glu(_results(lose))[1] == C.NOT_REPRODUCED
    assert C._judge_glu(_results({"relu": [2.6]}))[1] == C.INCONCLUSIVE      # unfinished
    # a diverged run (nan) counts as worse, never as missing
    warm = {"pre_ln L=2": [2.6, 2.7, 2.65], "post_ln L=2": [2.6, 2.7, 2.65],
            "pre_ln L=6": [2.5, 2.6, 2.55], "post_ln L=6": [float("nan")] * 3}
    assert C._judge_warmup(_results(warm))[1] == C.REPRODUCED
    warm["post_ln L=6"] = [2.5, 2.6, 2.55]
    assert C._judge_warmup(_results(warm))[1] == C.INCONCLUSIVE
    lin = {"softmax": [2.5, 2.6, 2.55], **{m: [2.7, 2.8, 2.76] for m in C.LINEAR}}
    assert C._judge_linear(_results(lin))[1] == C.REPRODUCED
    lin["gau"] = [2.5, 2.61, 2.55]
    assert C._judge_linear(_results(lin))[1] == C.INCONCLUSIVE


def test_claims_run_as_trainer_runs_and_measure_cache_and_rank(tmp_path):
    import tevo.bench
    with pytest.raises(Exception, match="--claims"):
        tevo.bench.run("claims", claims=["nope"], out=str(tmp_path))
    (rep,) = tevo.bench.run("claims", claims=["rank", "mqa"], seeds=2, budget_tokens=128,
                            d_model=16, n_layers=1, heads=2, seq_len=16, batch=4, jobs=1,
                            eval_windows=4, out=str(tmp_path), runs=str(tmp_path / "runs"))
    d = rep.data["claims"]
    assert d["rank"]["verdict"] == C.REPRODUCED
    cache = d["mqa"]["cache_bytes"]
    # one shared K/V head instead of two: exactly half the key/value bytes (measured)
    assert cache["multi-head"]["kv"] == 2 * cache["mqa"]["kv"] > 0
    assert cache["mqa"]["total"] > cache["mqa"]["kv"]
    assert all(c.startswith("tevo train default") for c in d["mqa"]["commands"].values())
    assert set(d["mqa"]["values"]) == {"multi-head", "gqa", "mqa"}
    md = (tmp_path / "claims.md").read_text()
    assert "Smoke" not in md and "| claim | papers |" in md
