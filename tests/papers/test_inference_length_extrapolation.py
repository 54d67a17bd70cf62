"""Length extrapolation as a registered evaluation: from the registry it gives exactly the
numbers `tevo eval RUN --lengths` prints, at multiples of the training length by default; a
learned position table reports the lengths it cannot encode; bad factors are one line."""
from __future__ import annotations

import json

import pytest

from tevo import cli
from tevo.errors import ConfigError
from tevo.registry import INFERENCE
from tiny import tiny_text


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    p = tmp_path_factory.mktemp("corpus") / "part.txt"
    p.write_text(tiny_text())
    out = tmp_path_factory.mktemp("runs") / "r"
    assert cli.main(["train", f"data.path={p}", "data.seq_len=16", "model.d_model=16",
                     "model.n_layers=1", "model.max_len=32",
                     "model.mixer={name: softmax, heads: 2}", "model.position=learned",
                     "train.batch_size=4", "train.steps=3", "train.warmup=1",
                     "train.eval_every=3", "train.eval_batches=1", "train.final_eval_batches=1",
                     "train.sample_tokens=0", "train.progress=false", "train.max_minutes=null",
                     f"train.out_dir={out}"]) == 0
    return out


def test_registered_evaluation_gives_the_numbers_of_tevo_eval_lengths(run, capsys):
    fn = INFERENCE.get("length_extrapolation").obj
    res = fn(run, factors=(1, 2, 4), split="test", max_batches=2)
    assert res["train_length"] == 16
    rows = {r["length"]: r for r in res["rows"]}
    assert sorted(rows) == [16, 32, 64] and rows[32]["factor"] == 2.0
    assert cli.main(["eval", str(run), "--json", "--split", "test", "--lengths", "16,32,64",
                     "--max-batches", "2"]) == 0
    ref = {r["length"]: r for r in json.loads(capsys.readouterr().out)["lengths"]}
    for n in (16, 32):
        assert rows[n]["loss"] == ref[n]["loss"] > 0
        assert rows[n]["perplexity"] == ref[n]["perplexity"]
    assert "learned position table" in rows[64]["error"]          # past max_len=32
    assert rows[64]["error"] == ref[64]["error"]
    with pytest.raises(ConfigError) as e:
        fn(run, factors=(0,))
    assert "\n" not in str(e.value)
