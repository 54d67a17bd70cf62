"""The benchmark harness's own logic at tiny sizes: exponent fits, crossovers, budget skipping,
report writing, option resolution, and each registered study's defining check."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import tevo
from tevo.bench import _common as C
from tevo.registry import BENCHMARKS, MIXERS, POSITIONS


# -- fits, crossovers, budgets ----------------------------------------------------------------
def test_fit_power_law_recovers_exponent_on_the_upper_half():
    ns = [64, 128, 256, 512, 1024, 2048]
    # a constant overhead dominates at short lengths; the upper half sees the n² term
    ys = [1e-3 + 1e-7 * n**2 for n in ns]
    fit = C.fit_power_law(ns, ys)
    assert fit["lengths"] == [512, 1024, 2048]
    assert 1.9 < fit["exponent"] < 2.0
    assert C.fit_power_law(ns, ys, upper_half=False)["exponent"] < 1.7
    exact = C.fit_power_law(ns, [3.0 * n**1.5 for n in ns], upper_half=False)
    assert exact["exponent"] == pytest.approx(1.5) and exact["coef"] == pytest.approx(3.0)
    assert exact["r2"] == pytest.approx(1.0)
    assert C.fit_power_law([64], [1.0]) is None
    assert C.fit_power_law([64, 128], [None, 1.0]) is None


def test_crossover_measured_always_extrapolated_never():
    ns = [128, 256, 512, 1024]
    ref = [n**2 * 1e-6 for n in ns]
    lin = [n * 2.56e-4 for n in ns]                   # equal to ref at n = 256
    c = C.crossover(ns, lin, ref)
    assert c["kind"] == "measured" and c["n"] == pytest.approx(256, rel=1e-6)
    assert C.crossover(ns, [r / 2 for r in ref], ref)["kind"] == "always"
    slow = [n * 1e-2 for n in ns]                     # crosses at 10,000: beyond the range
    c = C.crossover(ns, slow, ref, C.fit_power_law(ns, slow), C.fit_power_law(ns, ref))
    assert c["kind"] == "extrapolated" and c["n"] == pytest.approx(1e4, rel=1e-6)
    c = C.crossover(ns, [r * 2 for r in ref], ref, C.fit_power_law(ns, [r * 2 for r in ref]),
                    C.fit_power_law(ns, ref))
    assert c["kind"] == "never"
    assert C.crossover([], [], [])["kind"] == "n/a"


def test_predict_cost_uses_the_local_slope_clipped():
    assert C.predict_cost([], 10) is None
    assert C.predict_cost([(100, 1.0)], 200) == pytest.approx(4.0)        # default exponent 2
    assert C.predict_cost([(100, 1.0), (200, 2.0)], 400) == pytest.approx(4.0)
    assert C.predict_cost([(100, 1.0), (200, 64.0)], 400) == pytest.approx(64.0 * 8)  # clip 3


class _FakeRunner:
    """Synthetic measurements: t = c·n^p per mixer; one mixer errors, one times out."""

    def __init__(self, isolation):
        self.calls = []

    def measure(self, spec, timeout_s):
        name, n = spec["mixer"], spec["n"]
        self.calls.append((name, n))
        if name == "local" and n == 64:
            return {"error": "RuntimeError: boom"}
        p, c = {"softmax": (2.0, 1e-7), "local": (1.0, 1e-5)}.get(name, (1.0, 1e-5))
        t = c * n**p
        if name not in ("softmax", "local") and n >= 256:
            return {"timeout": True}
        rec = {"times": [t], "median_s": t, "min_s": t, "peak_bytes": int(1000 * n**p)}
        out = {"params": 1, "forward": dict(rec), "train": dict(rec), "peak_reset": True}
        if name == "softmax":
            out["decode"] = dict(rec, state_bytes=128 * n)
        return out

    def close(self):
        pass


def test_speed_skips_points_over_budget_reports_errors_and_fits(tmp_path, monkeypatch):
    from tevo.bench import complexity
    monkeypatch.setattr(complexity, "_Runner", _FakeRunner)
    other = next((n for n in MIXERS.names() if n not in ("softmax", "local")
                  and complexity.self_form(n) is not None), None)
    names = ["softmax"] + (["local"] if "local" in MIXERS else []) + ([other] if other else [])
    (rep,) = tevo.bench.run("speed", mixers=names, lengths=[32, 64, 128, 256, 512, 1024],
                            budget_s=0.5, repeat=1, decode_steps=1, out=str(tmp_path))
    res = rep.data["results"]["fp32"]
    sm = res["softmax"]
    # softmax: 3·(1e-7·n²)·2 + ... exceeds 0.5 s from n = 1024 (predicted, never run)
    assert sm["points"]["1024"]["status"] == "skipped"
    assert "over budget: predicted" in sm["points"]["1024"]["reason"]
    assert sm["points"]["512"]["status"] == "ok"
    assert sm["fits"]["forward"]["exponent"] == pytest.approx(2.0)
    assert any("softmax" in s["item"] and "1024" in s["item"] for s in rep.skipped)
    if "local" in names:
        assert res["local"]["points"]["64"]["status"] == "error"
        assert any("local" in e["item"] and "boom" in e["error"] for e in rep.errors)
        assert res["local"]["fits"]["forward"]["exponent"] == pytest.approx(1.0)
        co = res["local"]["crossover_vs_softmax"]["forward"]
        assert co["kind"] in ("measured", "always") and co["n"] == pytest.approx(100, rel=0.05)
    if other:
        pts = res[other]["points"]
        assert "timed out" in pts["256"]["reason"] and pts["512"]["status"] == "skipped"
    md = (tmp_path / "speed.md").read_text()
    assert "skipped" in md and "Fitted exponents" in md and "tevo bench speed" in md
    assert json.loads((tmp_path / "speed.json").read_text())["results"]["lengths"]


def test_speed_measures_real_peak_memory_in_a_fresh_process(tmp_path):
    # a generous budget: a loaded machine must not turn the n=1024 point into a skip (its
    # calls take milliseconds; the budget only bounds the prediction made from n=64)
    (rep,) = tevo.bench.run("speed", mixers=["softmax"], lengths=[64, 1024], repeat=1,
                            decode_steps=2, budget_s=600, out=str(tmp_path), write=False)
    pts = rep.data["results"]["fp32"]["softmax"]["points"]
    assert rep.data["isolation"] == "process"
    for n in ("64", "1024"):
        p = pts[n]
        assert p["status"] == "ok", p
        assert p["forward_s"] > 0 and p["train_s"] > 0 and p["decode_s"] > 0
        assert p["train_peak_bytes"] >= 0
    # resident-memory counters are folded per CPU in batches (~128 KB each), so only a peak well
    # above that is visible: at n=1024 the activations saved for backward (x, q, k, v, output,
    # each n·d fp32) alone are 5·1024·64·4 = 1.3 MB
    assert pts["1024"]["train_peak_bytes"] >= 5 * 1024 * 64 * 4
    # the KV cache holds 2·n·d fp32 numbers
    assert pts["1024"]["decode_state_bytes"] >= 2 * 1024 * 64 * 4


# -- flops ------------------------------------------------------------------------------------
def test_softmax_flops_match_closed_form_and_overtake_at_6d():
    from tevo.bench.complexity import attention_overtakes, count_forward_flops, fit_quadratic
    from tevo.registry import FFNS
    d = 32

    def softmax(dd):
        return MIXERS.build({"name": "softmax", "heads": 2}, d_model=dd, max_len=4096,
                            causal=True)

    def ffn(dd):
        return FFNS.build({"name": "mlp", "mult": 4}, d_model=dd)
    ns = [128, 256, 512, 1024]
    flops = [count_forward_flops(softmax, n, d)[0] for n in ns]
    for n, f in zip(ns, flops):
        assert f == 4 * n * n * d + 8 * n * d * d           # QKᵀ and AV; four projections
    per_token_ffn = count_forward_flops(ffn, 64, d)[0] / 64
    assert per_token_ffn == 16 * d * d
    fit = fit_quadratic(ns, flops)
    assert fit["a"] == pytest.approx(4 * d) and fit["b"] == pytest.approx(8 * d * d)
    assert attention_overtakes(fit, per_token_ffn) == pytest.approx(6 * d)
    assert attention_overtakes(fit_quadratic(ns, [5 * n for n in ns]), 10) is None


def test_declared_complexity_is_parsed_for_its_power_of_n():
    from tevo.bench.complexity import parse_n_exponent as p
    assert p("O(n² d)") == 2 and p("O(n d²)") == 1 and p("O(n_q n_k h d)") == 2
    assert p("O(n d log(n d))") == 1 and p("O(n^1.5 d)") == 1.5 and p("O(n √n d)") == 1.5
    assert p("O(n d m) (chunk: O(n C d + n d m))") == 1 and p("O(T n² + n² d)") == 2
    assert p("O(d)") is None and p("") is None
    # products distribute over sums, quotients subtract, logs count 0
    assert p("O(n (r + n/k) d)") == 2 and p("O(n (w + r) d)") == 1 and p("O(n log n d)") == 1
    assert p("O(r n (log n + c d))") == 1 and p("O(n² d / N_b)") == 2 and p("O(n^{3/2})") == 1.5


def test_declared_and_counted_growth_agree_on_the_fitted_terms():
    from tevo.bench.complexity import _agreement
    assert _agreement(1, {"exponent": 1.02}, {"a": 0.0}, 64) == "yes"
    assert _agreement(1, {"exponent": 1.89}, {"a": 96.0}, 64) == "no"            # hidden n²
    assert _agreement(2, {"exponent": 1.68}, {"a": 85.0}, 64).startswith("yes")   # n²/k + n r
    assert _agreement(2, {"exponent": 1.1}, {"a": 0.0}, 64) == "no"
    assert _agreement(None, {"exponent": 1.0}, {}, 64) == "—"


# -- reports and options ----------------------------------------------------------------------
def test_report_writes_json_markdown_and_png(tmp_path):
    rep = C.Report(name="demo", study="complexity", title="Demo", intro="What it does.",
                   cli="tevo bench demo --quick", machine=C.machine_info())
    rep.table(["a", "b|c"], [[1, float("nan")]], heading="Numbers", note="a note")
    rep.figure("plot", "a plot", C.loglog_plot({"x": ([1, 2, 4], [1, 4, 16])}, "n", "t"))
    rep.skip("thing", "over budget")
    rep.error("other", ValueError("bad\nsecond line"))
    rep.data = C.sanitize({"v": float("inf"), "w": [1.0, float("nan")]})
    paths = rep.write(tmp_path)
    md = paths["md"].read_text()
    assert "`tevo bench demo --quick`" in md and "Machine:" in md and "## Numbers" in md
    assert "b\\|c" in md and "![a plot](demo_plot.png)" in md
    assert "| thing | over budget |" in md and "ValueError: bad |" in md
    doc = json.loads(paths["json"].read_text())
    assert doc["results"] == {"v": None, "w": [1.0, None]} and doc["figures"] == ["demo_plot.png"]
    assert (tmp_path / "demo_plot.png").stat().st_size > 1000


def test_options_resolve_given_over_quick_over_default():
    from tevo.bench.complexity import ComplexityStudy
    from tevo.errors import TevoError
    speed = ComplexityStudy.commands[0]
    o = C.resolve_options(speed, {}, quick=False)
    assert o["lengths"] is None and o["repeat"] == 5 and o["max_minutes"] is None
    o = C.resolve_options(speed, {"repeat": "7", "lengths": "8,16"}, quick=True)
    assert o["repeat"] == 7 and o["lengths"] == [8, 16] and o["budget_s"] == 4.0
    assert o["max_minutes"] == speed.quick_minutes
    with pytest.raises(TevoError, match="unknown option"):
        C.resolve_options(speed, {"nope": 1}, quick=False)
    with pytest.raises(TevoError, match="choose one of"):
        C.resolve_options(speed, {"stat": "mean"}, quick=False)
    assert C.command_line("speed", {"lengths": [8, 16], "out": None}, True) == \
        "tevo bench speed --quick --lengths 8,16"


def test_every_catalogue_study_is_registered_with_commands():
    for name in ("modifications", "complexity", "extrapolation", "recall", "decoder_only",
                 "symmetry", "reference"):
        e = BENCHMARKS.get(name)
        assert e.paper and e.test and e.obj.commands
    cmds = C.all_commands()
    assert {"speed", "flops", "quality", "extrapolate", "recall", "reference",
            "decoder_only", "symmetry"} <= set(cmds)


def test_cli_runs_a_study_and_all_writes_an_index(tmp_path, capsys):
    from tevo.cli import main
    out = str(tmp_path)
    assert main(["bench", "decoder_only", "--lengths", "16", "--head-dims", "2,4",
                 "--scales", "1", "--samples", "1", "--out", out]) == 0
    assert (tmp_path / "decoder_only.md").exists() and (tmp_path / "decoder_only_rank.png").exists()
    assert main(["bench", "all", "--only", "symmetry", "--out", out]) == 0
    index = (tmp_path / "README.md").read_text()
    assert "[symmetry](symmetry.md)" in index and "Total wall time" in index
    assert main(["bench", "list"]) == 0
    assert "speed" in capsys.readouterr().out


# -- the studies' defining checks -------------------------------------------------------------
def test_causal_attention_is_full_rank_and_bidirectional_is_not():
    from tevo.bench.decoder_only import attention_weights, ranks
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 128, 2, generator=g, dtype=torch.float64)
    k = torch.randn(2, 128, 2, generator=g, dtype=torch.float64)
    wc, wb = attention_weights(q, k, True), attention_weights(q, k, False)
    assert torch.equal(wc, wc.tril()) and (wc.diagonal(dim1=-2, dim2=-1) > 0).all()
    # triangular with a positive diagonal: det = Π diag ≠ 0, exact rank n
    assert torch.linalg.slogdet(wc)[1].isfinite().all()
    (rb,), _ = ranks(wb, (1e-3,))
    (rc,), _ = ranks(wc, (1e-3,))
    assert rb < 0.5 * 128 < rc


def test_softmax_is_permutation_equivariant_and_nope_lm_is_not():
    from tevo.bench.symmetry import (_nope_lm, equivariance_error, mixer_fn,
                                     prefix_invariance_error)
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    perm = torch.randperm(10)
    assert equivariance_error(mixer_fn("softmax", False, 16, 10, 0), x, perm) < 1e-10
    assert prefix_invariance_error(mixer_fn("softmax", True, 16, 10, 0), x,
                                   torch.randperm(9).tolist()) < 1e-10
    assert equivariance_error(lambda t: t.cumsum(1), x, perm) > 1e-3     # order-dependent
    lm = _nope_lm({"length": 10, "d_model": 16, "seed": 0}, torch.Generator().manual_seed(0))
    assert lm["1"] < 1e-10 < 1e-6 < lm["2"]


def test_quality_suites_name_registry_components_and_skip_missing(tmp_path, monkeypatch):
    from tevo.bench import modifications as M
    opts = {"heads": 2}
    ffn, _ = M.suite_variants("ffn", opts)
    labels = [v.label for v in ffn]
    assert labels[0] == "gelu" and ffn[0].baseline
    assert {"relu", "swish", "glu", "geglu", "swiglu", "reglu", "bilinear"} <= set(labels)
    mixers, left = M.suite_variants("mixers", opts)
    causal = {e.name for e in MIXERS.entries() if e.supports.causal}
    assert {v.label for v in mixers} == causal and mixers[0].label == "softmax"
    assert {n for n, _ in left} == set(MIXERS.names()) - causal
    ghost = M.Variant("ghost", {"ffn": {"name": "ghost"}}, [("ffn", "ghost")])
    assert ghost.missing() == ["ffn 'ghost'"]
    monkeypatch.setattr(M, "suite_variants", lambda suite, o: (
        [ffn[0], next(v for v in ffn if v.label == "relu"), ghost], [("x", "why")]))
    (rep,) = tevo.bench.run("quality", suite=["ffn"], seeds=1, budget_tokens=64, d_model=16,
                            n_layers=1, heads=2, seq_len=16, batch=2, eval_windows=2,
                            out=str(tmp_path), runs=str(tmp_path / "runs"), jobs=1)
    rows = rep.data["rows"]
    assert {r["label"] for r in rows} == {"gelu", "relu"}
    # every row is an ordinary run of the Trainer, reproducible by its command
    relu = next(r for r in rows if r["label"] == "relu")
    assert relu["command"].startswith("tevo train default") and "activation: relu" in \
        relu["command"]
    assert (Path(relu["runs"][0]["run_dir"]) / "summary.json").exists()
    assert all(math.isfinite(r["val_bpc_mean"]) and r["params"] > 0 for r in rows)
    assert {s["item"] for s in rep.skipped} == {"ghost", "x"}
    md = (tmp_path / "quality-ffn.md").read_text()
    assert "**gelu** (baseline)" in md and "not registered: ffn 'ghost'" in md


def test_extrapolation_lists_every_causal_position_and_skips_others(tmp_path):
    from tevo.bench.extrapolation import causal_positions
    ok, left = causal_positions()
    accepted = set(MIXERS.get("softmax").supports.positions)
    assert set(ok) | {n for n, _ in left} == set(POSITIONS.names())
    assert all(set(POSITIONS.get(n).obj.hooks) <= accepted for n in ok) and "none" in ok
    (rep,) = tevo.bench.run("extrapolate", positions=["none", "learned", "sinusoidal"],
                            train_length=8, factors=[1, 2], budget_tokens=64, d_model=16,
                            n_layers=1, heads=2, batch=2, eval_tokens=64, seeds=2, jobs=1,
                            out=str(tmp_path), runs=str(tmp_path / "runs"))
    res = rep.data["results"]
    assert set(res) == {"none", "learned", "sinusoidal"}
    for r in res.values():
        # Trainer runs, two seeds each, evaluated by the registered length_extrapolation
        assert set(r["bpc"]) == {"8", "16"} and all(math.isfinite(v) for v in r["bpc"].values())
        assert len(r["seeds"]) == 2 and r["command"].startswith("tevo train default")
    from tevo.inference.length_extrapolation import length_extrapolation
    run_dir = tmp_path / "runs" / "extrapolate" / "runs"
    one = next(d for d in run_dir.iterdir() if "learned" in d.name and d.name.endswith("-s0"))
    direct = length_extrapolation(one, factors=[1, 2], max_batches=4)   # eval_tokens / (B·L)
    assert [row["bits_per_char"] for row in direct["rows"]] == pytest.approx(
        [res["learned"]["seeds"][0][k] for k in ("1", "2")])


def test_reference_ratios_alternate_and_tevo_configs_match_peers():
    from tevo.bench import reference as R
    order = []

    class Fake:
        def __init__(self, name, t):
            self.name, self.t = name, t

        def step(self):
            order.append(self.name)

    runners = {"tevo": Fake("tevo", 1), "a": Fake("a", 2), "b": Fake("b", 3)}
    times = R.alternate(runners, "step", 3, 1, C.Deadline(None))
    assert order == ["tevo", "a", "b", "a", "b", "tevo", "b", "tevo", "a"]
    assert all(len(v) == 3 for v in times.values())
    st = R.ratio_stats({"tevo": [1.0, 2.0, 1.0], "a": [2.0, 2.0, 3.0]})["a"]
    assert (st["min"], st["median"], st["max"]) == (1.0, 2.0, 3.0)
    pytest.importorskip("transformers")
    c = {"layers": 1, "d": 32, "heads": 2, "vocab": 64, "seq": 16, "batch": 1}
    for arch in ("gpt2", "llama"):
        if arch == "llama" and not all(n in tevo.registry(k) for k, n in
                                       (("position", "rope"), ("ffn", "swiglu"))):
            continue
        assert C.count_params(R.build_tevo(arch, c)) == C.count_params(R.build_hf(arch, c))


def test_extrapolation_runs_rope_scalings_as_rows(tmp_path):
    """RoPE's context-extension scalings join the study as rows rope:<scaling>, built with the
    training length as their pre-training length and the longest factor as their factor."""
    from tevo.bench.extrapolation import causal_positions, position_spec
    ok, left = causal_positions(["rope:yarn", "rope:nope", "alibi:yarn"])
    assert ok == ["rope:yarn"] and [n for n, _ in left] == ["rope:nope", "alibi:yarn"]
    assert position_spec("rope:llama3", 8, 4) == {"name": "rope", "scaling": "llama3",
                                                  "factor": 4.0, "original_max_len": 8}
    (rep,) = tevo.bench.run("extrapolate", positions=["rope:dynamic", "rope:llama3", "rope:yarn"],
                            train_length=8, factors=[1, 2], budget_tokens=64, d_model=16,
                            n_layers=1, heads=2, batch=2, eval_tokens=64, jobs=1,
                            out=str(tmp_path), runs=str(tmp_path / "runs"))
    res = rep.data["results"]
    assert set(res) == {"rope:dynamic", "rope:llama3", "rope:yarn"}
    for name, r in res.items():
        assert r["position"]["scaling"] == name.split(":")[1]
        assert all(math.isfinite(v) for v in r["bpc"].values()) and set(r["bpc"]) == {"8", "16"}


def test_profile_splits_a_training_step_and_writes_a_trace(tmp_path):
    from tevo.bench._run import run
    from tevo.bench.profile import category, split
    assert category("aten::addmm") == "matmul" and category("aten::gelu") == "elementwise"
    assert category("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert category("Optimizer.step#AdamW.step") == "optimizer"
    assert category("aten::_softmax") == "attention" and category("aten::_log_softmax") != \
        "attention"
    assert category("aten::_to_copy") == "casts"
    s = split([{"name": "aten::mm", "self_us": 3e5}, {"name": "aten::add", "self_us": 1e5}],
              wall_us=5e5)
    assert s == {"matmul": 0.3, "attention": 0.0, "elementwise": 0.1, "optimizer": 0.0,
                 "casts": 0.0, "other": 0.0, "python": 0.1}
    rep, = run("profile", quick=True, out=str(tmp_path), threads=1,
               set=["model.n_layers=1", "model.d_model=32", "data.seq_len=16",
                    "train.batch_size=2", "train.precision=fp32"])
    d = rep.data
    assert sum(d["split_s_per_step"].values()) == pytest.approx(d["train_wall_s"] / d["steps"],
                                                                rel=1e-6)
    assert d["split_s_per_step"]["matmul"] > 0 and d["split_s_per_step"]["optimizer"] > 0
    assert d["decode"]["tokens_per_s"] > 0
    assert (tmp_path / "profile_trace.json").stat().st_size > 0
    assert "Training step: top operators" in (tmp_path / "profile.md").read_text()


def test_quality_suite_vision_is_the_vision_study(tmp_path):
    pytest.importorskip("sklearn")
    from tevo.bench._run import run
    reps = run("quality", quick=True, out=str(tmp_path), suite=["vision"], threads=1, seeds=2)
    assert [r.name for r in reps] == ["vision"]
    assert (tmp_path / "vision.md").exists()
    assert reps[0].options["seeds"] == [0, 1]
