"""`tevo bench context` at a smoke budget: a model trained on MQAR answers from k contexts with
pcw, nbce and truncation; the report has the table (k = 1 and every k), the plot and the
comparison sentences, marked as a smoke test."""
from __future__ import annotations

import json

import pytest


@pytest.mark.slow        # trains a model, then three methods at every k
def test_bench_context_quick_writes_the_table(tmp_path):
    pytest.importorskip("matplotlib")
    from tevo.cli import main
    assert main(["bench", "context", "--quick", "--ks", "2,4", "--steps", "5",
                 "--examples", "4", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "context.md").read_text()
    assert "Smoke test, not a result" in md and "| k = 4 |" in md
    assert "pcw answers better than truncation" in md and "nbce answers better" in md
    rows = json.loads((tmp_path / "context.json").read_text())["results"]["rows"]
    assert {(r["method"], r["k"]) for r in rows} == {(m, k) for m in ("truncate", "pcw", "nbce")
                                                      for k in (1, 2, 4)}
    assert all(0 <= r["accuracy"] <= 1 for r in rows)
