"""`tevo finetune RUN --peft NAME`: the one Trainer trains only the method's parameters;
checkpoints hold only the delta (safetensors) with the base run's path and hash; the rebuilt
model (base + delta, merged) gives the fine-tuned numbers; a different base is refused in one
line; bad options are one line."""
from __future__ import annotations

import importlib.util
import json

import pytest
from safetensors.torch import load_file

from tevo import cli
from tevo.train.checkpoint import WEIGHTS, latest_checkpoint
from tevo.train.peft_finetune import load_peft_model
from tiny import tiny_text


def _train(out, corpus, steps=3):
    assert cli.main(["train", f"data.path={corpus}", "data.seq_len=16", "model.d_model=16",
                     "model.n_layers=2", "model.max_len=16",
                     "model.mixer={name: softmax, heads: 2}", "train.batch_size=4",
                     f"train.steps={steps}", "train.warmup=1", "train.eval_every=3",
                     "train.eval_batches=1", "train.final_eval_batches=1",
                     "train.sample_tokens=0", "train.progress=false", "train.max_minutes=null",
                     "model.dropout=0.0", f"train.out_dir={out}"]) == 0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    p = tmp_path_factory.mktemp("corpus")
    (p / "a.txt").write_text(tiny_text())
    (p / "b.txt").write_text(tiny_text(seed=1).upper())          # another "domain"
    return p


@pytest.fixture(scope="module")
def base(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "base"
    _train(out, corpus / "a.txt")
    return out


_PEFT = pytest.mark.skipif(importlib.util.find_spec("peft") is None,
                           reason="LoRA needs the optional extra peft (tevo[peft])")
FT = ["train.steps=3", "train.warmup=1", "train.eval_every=3", "train.eval_batches=1",
      "train.final_eval_batches=1", "train.batch_size=4", "train.progress=false"]


@pytest.mark.parametrize("method,opts", [("pafi", ["peft.sparsity=0.05"]),
                                         ("hiwi", ["peft.rank=2"]),
                                         ("meft", ["peft.rank=2", "peft.lam=0.5"]),
                                         pytest.param("lora", ["peft.rank=2"], marks=_PEFT)])
def test_peft_finetune_saves_only_the_delta_and_reloads(base, corpus, capsys, method, opts):
    assert cli.main(["finetune", str(base), "--json", "--peft", method, *opts,
                     f"data.path={corpus / 'b.txt'}", *FT]) == 0
    s = json.loads(capsys.readouterr().out)
    run = base / f"peft-{method}"
    assert 0 < s["trainable_params"] < s["total_params"] / 4
    meta = json.loads((run / "peft.json").read_text())
    assert meta["base_run"] == str(base.resolve()) and len(meta["base_sha256"]) == 64
    delta = load_file(str(latest_checkpoint(run) / WEIGHTS))
    n_delta = sum(v.numel() for k, v in delta.items() if not k.endswith(".idx"))
    assert n_delta == s["trainable_params"]
    # the delta rebuilt on the base gives the fine-tuned model's validation loss
    model, r, _ = load_peft_model(run)
    from tevo.train.evaluate import evaluate
    from tevo.train.run import load_run
    ev = load_run(base, data_overrides=[f"path={corpus / 'b.txt'}"])
    got = evaluate(model, ev.objective, ev.data, "val", 4, 1)["loss"]
    base_loss = evaluate(ev.model, ev.objective, ev.data, "val", 4, 1)["loss"]
    assert got != base_loss
    assert abs(got - s["final_val_loss"]) < 0.05 * abs(base_loss - s["final_val_loss"]) + 1e-4


def test_a_different_base_and_bad_options_are_refused(base, corpus, tmp_path, capsys):
    assert cli.main(["finetune", str(base), "--peft", "pafi", "peft.sparsity=0.05",
                     *FT]) == 0
    capsys.readouterr()
    other = tmp_path / "other"
    _train(other, corpus / "a.txt", steps=4)
    with pytest.raises(Exception) as e:
        load_peft_model(base / "peft-pafi", base_run=other)
    assert "not the same base run" in str(e.value) and "\n" not in str(e.value)
    for bad in (["peft.sparsity=0"], ["peft.sparsity=1.5"], ["peft.rank=0"]):
        name = "hiwi" if "rank" in bad[0] else "pafi"
        assert cli.main(["finetune", str(base), "--peft", name, *bad, *FT]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, err
