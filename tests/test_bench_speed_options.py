"""The speed study measures the options a user gets (defaults or a documented preset), never
the registry's conformance-suite ``tiny`` ones unless asked; defaults that cannot be built fall
back to tiny and say so on the page."""
import pytest

import tevo.bench
from tevo.bench import complexity
from tevo.registry import MIXERS


class _Recorder:
    specs: list = []

    def __init__(self, isolation):
        pass

    def measure(self, spec, timeout_s):
        _Recorder.specs.append(spec)
        rec = {"times": [1e-3], "median_s": 1e-3, "min_s": 1e-3, "peak_bytes": 1000}
        out = {"params": 1, "forward": dict(rec), "train": dict(rec), "peak_reset": True}
        if spec["mixer"] == "local":
            out["options_fallback"] = "ConfigError: mixer.window: boom"
        return out

    def close(self):
        pass


@pytest.mark.parametrize("presets", ["default", "tiny"])
def test_speed_builds_defaults_not_tiny_options(tmp_path, monkeypatch, presets):
    if "linear" not in MIXERS or not MIXERS.get("linear").tiny:
        pytest.skip("needs the linear mixer with tiny options")
    monkeypatch.setattr(complexity, "_Runner", _Recorder)
    monkeypatch.setattr(complexity, "BENCH_PRESETS",
                        {"softmax": ({"heads": 2}, "two heads, for the test")})
    _Recorder.specs = []
    (rep,) = tevo.bench.run("speed", mixers=["softmax", "linear", "local"], lengths=[64],
                            repeat=1, decode_steps=1, presets=presets, out=str(tmp_path))
    spec = {s["mixer"]: s for s in _Recorder.specs}
    tiny = MIXERS.get("linear").tiny
    res = rep.data["results"]["fp32"]
    if presets == "default":
        assert spec["linear"]["options"] == {}                 # the defaults (chunk 64)
        assert spec["linear"]["fallback_options"] == tiny
        assert spec["softmax"]["options"] == {"heads": 2}      # the documented preset
        assert "benchmark preset (two heads" in res["softmax"]["options_source"]
        assert res["linear"]["options_source"] == "defaults"
        assert "do not build here: ConfigError" in res["local"]["options_source"]
    else:
        assert spec["linear"]["options"] == tiny
        assert spec["linear"]["fallback_options"] is None
    md = (tmp_path / "speed.md").read_text()
    assert "Options measured" in md
    assert ("not a speed result" in md) == (presets == "tiny")


def test_worker_falls_back_to_tiny_options_and_reports_why():
    from tevo.bench._speed_worker import measure
    spec = {"mixer": "linear", "options": {"heads": 3}, "fallback_options": {"heads": 2},
            "d_model": 16, "n": 8, "modes": ["forward"], "repeat": 1, "budget_s": 1.0}
    r = measure(spec)
    assert "mixer.heads" in r["options_fallback"] and r["forward"]["min_s"] > 0
    assert r["forward"]["peak_bytes"] >= 0
    assert "error" in measure(dict(spec, fallback_options=None))


def test_linear_time_goals_follow_the_declared_complexity():
    from tevo.bench.complexity import linear_time_goals
    fit = lambda e: {"exponent": e}                                  # noqa: E731
    assert linear_time_goals({"mixer": "softmax", "fits": {}}) is None      # O(n² d): none
    if "linear" in MIXERS:
        g = linear_time_goals({"mixer": "linear", "fits": {"train": fit(1.3)}})
        assert g["train_goal"] == 1.1 and g["train_met"] is False and "decode_goal" not in g
    if "s5" in MIXERS:                                    # a scan, a fixed-size state
        g = linear_time_goals({"mixer": "s5", "fits": {"train": fit(1.15), "decode": fit(0.02),
                                                       "decode_state": fit(0.0)}})
        assert g["train_goal"] == 1.2 and g["train_met"] and g["decode_met"]
        g = linear_time_goals({"mixer": "s5", "fits": {"decode": fit(0.3),
                                                       "decode_state": fit(0.0)}})
        assert g["decode_met"] is False and g["train_met"] is None
