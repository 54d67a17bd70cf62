"""`tevo bench peft` at a smoke budget: every method fine-tunes the base run through the one
Trainer and the report has the table, the plot and one sentence per paper claim, marked as a
smoke test."""
from __future__ import annotations

import json

import pytest


@pytest.mark.slow        # ~30 s: a base run and four fine-tunes
def test_bench_peft_quick_writes_table_and_claims(tmp_path):
    pytest.importorskip("matplotlib")
    from tevo.cli import main
    assert main(["bench", "peft", "--quick", "--methods", "full,pafi,hiwi,meft",
                 "--d-model", "16", "--seq-len", "16", "--base-steps", "3", "--steps", "2",
                 "--out", str(tmp_path)]) == 0
    md = (tmp_path / "peft.md").read_text()
    assert "Smoke test, not a result" in md
    assert "'No added latency' (pafi" in md and "'No added latency' (hiwi" in md
    assert "'Memory saving at similar quality' (meft vs full)" in md
    data = json.loads((tmp_path / "peft.json").read_text())
    rows = data["results"]["rows"]
    by = {r["method"]: r for r in rows}
    assert set(by) == {"full", "pafi", "hiwi", "meft"}
    assert by["pafi"]["trainable"] < by["hiwi"]["trainable"] < by["full"]["trainable"]
    assert by["meft"]["activation_bytes"] < by["full"]["activation_bytes"]
