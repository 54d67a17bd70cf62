"""Every segment memory trains through the one trainer as xl_memory does (tevo.train.segments):
ordered lanes, the memory carried across steps and held by the checkpoint (a stopped and resumed
run equals the uninterrupted one), and `tevo eval` reads the split segment-wise with it; the
depth-recurrent (universal, act) and reversible models train and resume like any model."""
from __future__ import annotations

import json

import pytest
import torch

from tevo import cli
from tevo.config import load_config
from tevo.train.checkpoint import STATE, latest_checkpoint
from tevo.train.trainer import train
from test_train import assert_same_run, corpus, tiny  # noqa: F401  (corpus: the fixture)

MEMORIES = {
    "compressive": ["model.position=xl_relative",
                    "model.memory={name: compressive, mem_len: 16, cmem_len: 8, rate: 2}"],
    "rmt": ["model.position=learned", "model.max_len=48",
            "model.memory={name: rmt, mem_tokens: 4, segment: 16, bptt: 2}"],
    "sparse_long_memory": ["model.position=xl_relative",
                           "model.memory={name: sparse_long_memory, mem_len: 32, short_len: 8}"],
    "memorizing": ["model.position=rope",
                   "model.memory={name: memorizing, mem_len: 16, mem_size: 64, k: 4}"],
    "autocompressor": ["model.position=learned", "model.max_len=64",
                       "model.memory={name: autocompressor, summary: 2, segment: 16, bptt: 2, "
                       "max_summaries: 16}"],
    "memformer": ["model.position=rope",
                  "model.memory={name: memformer, slots: 4, segment: 16, bptt: 2, heads: 2}"],
    "lamemo": ["model.position=rope", "model.memory={name: lamemo, mem_len: 32}"],
    "block_recurrent": ["model.position=rope",
                        "model.memory={name: block_recurrent, block: 16, states: 4, heads: 2}"],
}


@pytest.mark.parametrize("name", sorted(MEMORIES))
def test_memory_trains_resumes_exactly_and_evaluates_segment_wise(name, corpus, tmp_path, capsys):
    ov = [*MEMORIES[name], "model.dropout=0.1", "train.steps=4", "train.eval_every=2",
          "train.eval_batches=1", "train.final_eval_batches=1"]
    s = train(load_config("default", tiny(corpus, tmp_path / "full", *ov)))
    train(load_config("default", tiny(corpus, tmp_path / "part", *ov)), stop_at=2)
    st = torch.load(latest_checkpoint(tmp_path / "part") / STATE, weights_only=True)
    assert st["memory"] is not None and st["memory"]["seen"].tolist() == [2 * 32] * 8
    assert cli.main(["train", "--resume", str(tmp_path / "part")]) == 0
    assert_same_run(tmp_path / "full", tmp_path / "part", steps=4)
    capsys.readouterr()
    assert cli.main(["eval", str(tmp_path / "full"), "--json", "--max-batches", "1"]) == 0
    got = json.loads(capsys.readouterr().out)["loss"]
    assert abs(got - s["final_val_loss"]) < 1e-6


@pytest.mark.parametrize("over", [
    ["model.arch=universal", "model.n_layers=1", "model.extra={max_steps: 3, ponder_weight: 0.01}"],
    ["model.arch=act", "model.extra={max_steps: 2}"],
    ["model.extra={reversible: {chunks: 2}}"],
], ids=["universal", "act", "reversible"])
def test_depth_recurrent_and_reversible_models_train_and_resume_exactly(over, corpus, tmp_path):
    """tevo train runs them like any model: the ponder cost enters the logged loss (aux), the
    reversible backward drives the optimiser, and a resumed run equals the uninterrupted one."""
    ov = [*over, "model.position=rope", "train.steps=4", "train.eval_every=2",
          "train.eval_batches=1", "train.final_eval_batches=1"]
    train(load_config("default", tiny(corpus, tmp_path / "full", *ov)))
    train(load_config("default", tiny(corpus, tmp_path / "part", *ov)), stop_at=2)
    assert cli.main(["train", "--resume", str(tmp_path / "part")]) == 0
    assert_same_run(tmp_path / "full", tmp_path / "part", steps=4)
