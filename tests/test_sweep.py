"""Sweeps: points are ordinary runs of the one Trainer; finished points are never retrained;
local processes and Ray give the numbers of running the points one by one; the statistics are
Student-t intervals over paired seeds that call a zero-holding interval no difference."""
from __future__ import annotations

import json
import math

import pytest
from test_train import corpus, tiny  # noqa: F401  (the tiny-run fixture and overrides)

from tevo import cli
from tevo.errors import ConfigError
from tevo.train import sweep as sw


def test_paired_difference_is_the_t_interval_and_zero_is_no_difference():
    d = sw.paired_difference([1.5, 2.1, 2.7], [0.5, 1.0, 1.5])     # differences 1, 1.1, 1.2
    half = 4.303 * 0.1 / math.sqrt(3)                               # t(2) · sd / √n
    assert d["mean"] == pytest.approx(1.1)
    assert (d["lo"], d["hi"]) == pytest.approx((1.1 - half, 1.1 + half))
    assert d["measurable"] and sw.verdict(d) == "worse than baseline"
    assert sw.verdict(d, lower_is_better=False) == "better than baseline"
    noisy = sw.paired_difference([1.0, 0.0, 1.2], [0.5, 0.6, 0.4])
    assert noisy["lo"] < 0 < noisy["hi"] and sw.verdict(noisy) == "no measurable difference"
    one = sw.paired_difference([1.0], [0.0])                        # one seed: never a result
    assert not one["measurable"] and sw.verdict(one) == "no measurable difference"


def test_grid_values_parse_as_yaml_and_mappings_stay_whole():
    g = sw.parse_grid(["model.n_layers=1,2", "model.mixer={name: softmax, heads: 2},linear"])
    assert g == {"model.n_layers": [1, 2],
                 "model.mixer": [{"name": "softmax", "heads": 2}, "linear"]}
    with pytest.raises(ConfigError, match="--grid"):
        sw.parse_grid(["model.n_layers"])
    with pytest.raises(ConfigError, match="seeds"):
        sw.Sweep(out="x", seeds=[0, 0])


def _sweep(corpus, out, seeds=(0, 1)):
    base = tiny(corpus, out / "unused", "train.steps=3", "train.eval_every=0",
                "train.final_eval_batches=2", "model.n_layers=1")
    base = [o for o in base if not o.startswith("train.out_dir")]
    return sw.Sweep(out=out, config="default", overrides=base,
                    grid={"model.d_model": [16, 32]}, seeds=list(seeds))


def test_sweep_points_are_trainer_runs_resumed_by_skipping_finished_ones(corpus, tmp_path,
                                                                         monkeypatch):
    s = _sweep(corpus, tmp_path / "sw")
    recs = sw.run_sweep(s, progress=False)
    assert [(r["point"]["model.d_model"], r["seed"]) for r in recs] == \
        [(16, 0), (16, 1), (32, 0), (32, 1)]
    for r in recs:                                    # each point is a run folder of its own
        summary = json.loads((sw.Path(r["run_dir"]) / "summary.json").read_text())
        assert summary["final_val_loss"] == r["summary"]["final_val_loss"]
        assert r["command"].startswith("tevo train default ") and "train.seed=" in r["command"]
    assert recs[0]["summary"]["final_val_loss"] != recs[1]["summary"]["final_val_loss"]
    rows = sw.aggregate(s, recs)
    assert rows[0]["verdict"] == "baseline" and rows[1]["diff"]["n"] == 2
    assert rows[1]["mean"] == pytest.approx(sum(rows[1]["values"]) / 2)
    page = sw.write_report(s, rows).read_text()
    assert "no measurable difference" in page or "than baseline" in page

    calls = []
    real = sw._train_point
    monkeypatch.setattr(sw, "_train_point", lambda a: calls.append(a) or real(a))
    again = sw.run_sweep(s, progress=False)           # everything finished: nothing trains
    assert calls == [] and [r["summary"] for r in again] == [r["summary"] for r in recs]
    (sw.Path(recs[2]["run_dir"]) / "summary.json").unlink()        # one point interrupted
    again = sw.run_sweep(s, progress=False)
    assert len(calls) == 1 and again[2]["summary"]["final_val_loss"] == \
        recs[2]["summary"]["final_val_loss"]           # retrained from scratch, same numbers


def test_parallel_processes_and_ray_equal_one_by_one(corpus, tmp_path):
    one = sw.run_sweep(_sweep(corpus, tmp_path / "one", seeds=[0]), progress=False)
    two = sw.run_sweep(_sweep(corpus, tmp_path / "two", seeds=[0]), jobs=2, progress=False)
    key = ("final_val_loss", "final_train_loss", "params", "tokens")
    assert [{k: r["summary"][k] for k in key} for r in one] == \
        [{k: r["summary"][k] for k in key} for r in two]
    pytest.importorskip("ray")
    ray = sw.run_sweep(_sweep(corpus, tmp_path / "ray", seeds=[0]), jobs=2, engine="ray",
                       progress=False)
    assert [{k: r["summary"][k] for k in key} for r in one] == \
        [{k: r["summary"][k] for k in key} for r in ray]


def test_match_params_keeps_the_parameter_count_and_bad_input_is_one_line(corpus, tmp_path,
                                                                          capsys):
    s = sw.Sweep(out=tmp_path / "m", config="default",
                 overrides=["model.d_model=64", "model.mixer={name: softmax, heads: 2}"],
                 grid={"model.n_layers": [1, 2, 4]}, match="model.d_model", match_step=8)
    pts = s.grid_points()
    assert pts[0]["model.d_model"] == 64 and pts[1]["model.d_model"] < 64 \
        and pts[2]["model.d_model"] < pts[1]["model.d_model"]
    counts = [s._params(p) for p in pts]
    assert all(abs(c - counts[0]) / counts[0] < 0.12 for c in counts), counts
    assert cli.main(["sweep", "default", "train.steps=abc", "--grid", "model.n_layers=1,2",
                     "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert not (tmp_path / "bad").exists()            # checked before anything is written


def test_deeper_wider_study_writes_its_table_from_a_sweep(tmp_path):
    from tevo.bench._run import run
    rep, = run("deeper_wider", quick=True, out=str(tmp_path), depths=[1, 2], steps=2,
               seeds=[0, 1], jobs=1, d_model=32, runs=str(tmp_path / "runs"))
    page = (tmp_path / "deeper_wider.md").read_text()
    assert "Smoke test, not a result" in page and "| 2 | 24 |" in page
    rows = rep.data["rows"]
    assert [r["point"]["model.n_layers"] for r in rows] == [1, 2]
    assert abs(rows[1]["params"] - rows[0]["params"]) / rows[0]["params"] < 0.05
    assert rows[1]["verdict"] in ("no measurable difference", "better than baseline",
                                  "worse than baseline")
    assert len(list((tmp_path / "runs" / "runs").glob("*/summary.json"))) == 4


def test_point_lists_and_a_deadline_stop_between_points_and_resume(corpus, tmp_path):
    import time
    base = _sweep(corpus, tmp_path / "unused").overrides
    pts = [{"model.d_model": 16}, {"model.d_model": 32, "model.n_layers": 2}]
    s = sw.Sweep(out=tmp_path / "pl", config="default", overrides=base, point_list=pts,
                 seeds=[0])
    assert s.grid_points() == pts and "n_layers=2" in s.command(pts[1], 0)
    assert sw.run_sweep(s, progress=False, deadline=time.monotonic() - 1) == []
    first = sw.run_sweep(s, progress=False, deadline=time.monotonic() + 3600)
    assert [r["point"] for r in first] == pts
    with pytest.raises(ConfigError, match="grid"):
        sw.Sweep(out="x", grid={"model.d_model": [16]}, point_list=pts)
    with pytest.raises(ConfigError, match="points"):
        sw.Sweep(out="x", point_list=[pts[0], dict(pts[0])])


def test_a_finished_point_of_another_budget_is_trained_again(corpus, tmp_path, monkeypatch):
    s = _sweep(corpus, tmp_path / "sw", seeds=(0,))
    sw.run_sweep(s, progress=False)
    calls = []
    real = sw._train_point
    monkeypatch.setattr(sw, "_train_point", lambda a: calls.append(a) or real(a))
    s2 = sw.Sweep(out=s.out, config="default", overrides=[*s.overrides, "train.steps=4"],
                  grid=s.grid, seeds=[0])
    recs = sw.run_sweep(s2, progress=False)
    assert len(calls) == 2 and all(r["summary"]["steps"] == 4 for r in recs)
    sw.run_sweep(s2, progress=False)                   # now finished at this budget
    assert len(calls) == 2
