"""``tevo bench model_speed``: whole-model training-step time, memory and FLOPs, hourglass vs
the plain decoder at equal depth (Nawrot et al., 2022)."""
from __future__ import annotations

import json

import tevo
from tevo.bench import run
from tevo.bench.model_speed import model_configs
from tevo.models.block import Block


def test_rows_have_equal_depth_and_width():
    opts = {"lengths": [32, 64], "factors": [2, 4], "d_model": 16, "n_layers": 5, "heads": 2}
    rows = model_configs(opts)
    assert [r[0] for r in rows] == ["decoder (gpt)", "hourglass k=2", "hourglass k=4"]
    for label, cfg in rows:
        m = tevo.build_model(cfg)
        blocks = sum(isinstance(b, Block) for b in m.modules())
        assert m.cfg.d_model == 16 and m.cfg.n_layers == 5, label
        assert blocks == 5, label                # equal depth: 5 blocks in every model
        if label.startswith("hourglass"):
            assert len(m.mid.blocks) == 3, label       # 1 pre + 3 shortened + 1 post


def test_quick_run_reports_every_row(tmp_path):
    rep, = run("model_speed", quick=True, lengths=[32, 64], factors=[4], d_model=16,
               n_layers=4, heads=2, repeat=1, threads=1, out=str(tmp_path))
    data = json.loads((tmp_path / "model_speed.json").read_text())["results"]["rows"]
    assert set(data) == {"decoder (gpt)", "hourglass k=4"}
    for label, pts in data.items():
        assert set(pts) == {"32", "64"}, label
        for r in pts.values():
            assert r["median_s"] > 0 and r["flops"] > 0 and r["params"] > 0
    # 2 of 4 layers at n/4: the counted FLOPs fall, and more so at the longer length
    ratio = {n: data["hourglass k=4"][n]["flops"] / data["decoder (gpt)"][n]["flops"]
             for n in ("32", "64")}
    assert ratio["64"] < 0.8 and ratio["64"] <= ratio["32"] + 1e-9, ratio
    md = (tmp_path / "model_speed.md").read_text()
    assert "Smoke test, not a result" in md and "hourglass k=4: step time" in md
    assert "Command: `tevo bench model_speed --quick" in md
