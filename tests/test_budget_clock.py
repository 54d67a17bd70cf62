"""train.budget_clock: train.max_minutes counts wall-clock time or the process's CPU time."""
from __future__ import annotations

import time

import pytest

from tevo.config import load_config
from tevo.data.corpora import ShakespeareCorpus
from tevo.errors import ConfigError
from tevo.train.trainer import Trainer


def _cfg(tmp_path, clock):
    text = tmp_path / "part.txt"
    text.write_text(ShakespeareCorpus().splits()["train"][:20_000])
    return load_config("default", [
        f"data.path={text}", "data.seq_len=16", "model.d_model=16", "model.n_layers=1",
        "model.max_len=16", "model.mixer={name: softmax, heads: 2}", "train.batch_size=2",
        "train.steps=40", "train.warmup=0", "train.eval_every=0", "train.final_eval_batches=1",
        "train.ckpt_every=0", "train.sample_tokens=0", "train.progress=false",
        "train.plot=false", "train.precision=fp32", "train.threads=1", "train.max_minutes=1",
        f"train.budget_clock={clock}", f"train.out_dir={tmp_path / clock}"])


@pytest.mark.parametrize("clock", ["wall", "cpu"])
def test_budget_clock_picks_the_clock_that_stops_the_run(tmp_path, monkeypatch, clock):
    # a fake CPU clock that runs 20 s per reading: the CPU budget (60 s) ends within a few
    # steps, the wall-clock one (the real clock, well under a minute here) never does
    ticks = iter(range(0, 10 ** 6, 20))
    monkeypatch.setattr(time, "process_time", lambda: float(next(ticks)))
    s = Trainer(_cfg(tmp_path, clock)).fit()
    if clock == "cpu":
        assert s["stopped"] == "time budget" and 1 <= s["steps"] < 10, s
    else:
        assert s["steps"] == 40, s


def test_budget_clock_refuses_an_unknown_clock(tmp_path):
    with pytest.raises(ConfigError, match="train.budget_clock"):
        _cfg(tmp_path, "gpu")
