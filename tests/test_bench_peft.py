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
    assert by["meft"]["train_memory_bytes"] < by["full"]["train_memory_bytes"]
    assert all(r["latency_ratio"] > 0 for r in rows) and "base (no fine-tuning)" in md
    assert by["full"]["unmerged_latency_ratio"] is None and by["hiwi"]["unmerged_latency_ratio"]


def test_training_memory_counts_weights_optimizer_state_and_activations():
    import torch

    from tevo.bench.peft import train_memory_bytes
    m = torch.nn.Linear(10, 10)                                     # 110 fp32 parameters
    assert train_memory_bytes(m, 0, 0) == 440                       # frozen: the weights only
    assert train_memory_bytes(m, 110, 0) == 440 + 12 * 110          # + grad + 2 Adam moments
    assert train_memory_bytes(m, 10, 1000) == 440 + 120 + 1000


@pytest.mark.parametrize("bad, flag", [({"methods": ["full", "adapter"]}, "--methods"),
                                       ({"steps": 0}, "--steps"), ({"seeds": []}, "--seeds"),
                                       ({"eval_batches": 0}, "--eval-batches")])
def test_bad_options_are_one_line_config_errors(bad, flag):
    from tevo.bench.peft import check_options
    from tevo.errors import ConfigError
    opts = {"methods": ["full", "lora"], "d_model": 16, "n_layers": 2, "seq_len": 16,
            "base_steps": 3, "steps": 2, "batch_size": 4, "eval_batches": 4, "seeds": [0]}
    check_options(opts)
    with pytest.raises(ConfigError) as e:
        check_options({**opts, **bad})
    assert str(e.value).startswith(flag) and "\n" not in str(e.value)
