"""`tevo generate --method pcw|structured|nbce`: with one context each method continues the
prompt exactly as plain greedy generation of context + prompt does; several contexts run; bad
input is one line."""
from __future__ import annotations

import pytest

from tevo import cli
from tiny import tiny_text


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    p = tmp_path_factory.mktemp("corpus") / "part.txt"
    p.write_text(tiny_text())
    out = tmp_path_factory.mktemp("runs") / "r"
    assert cli.main(["train", f"data.path={p}", "data.seq_len=16", "model.d_model=16",
                     "model.n_layers=1", "model.max_len=48",
                     "model.mixer={name: softmax, heads: 2}", "model.position=rope",
                     "train.batch_size=4", "train.steps=3", "train.warmup=1",
                     "train.eval_every=3", "train.eval_batches=1", "train.final_eval_batches=1",
                     "train.sample_tokens=0", "train.progress=false", "train.max_minutes=null",
                     f"train.out_dir={out}"]) == 0
    return out


def _gen(run, capsys, *extra):
    assert cli.main(["generate", str(run), "--greedy", "--max-new-tokens", "8", *extra]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("method", ["pcw", "structured", "nbce"])
def test_one_context_continues_like_plain_generation(run, capsys, method):
    plain = _gen(run, capsys, "--prompt", "KING: my lord")
    one = _gen(run, capsys, "--method", method, "--context", "KING: my", "--prompt", " lord")
    assert one == " lord" + plain[len("KING: my lord"):]
    many = _gen(run, capsys, "--method", method, "--context", "KING: my", "--context",
                "QUEEN: no", "--prompt", " lord")
    assert many.startswith(" lord") and len(many) > len(" lord")


def test_context_file_and_bad_input(run, capsys, tmp_path):
    f = tmp_path / "ctx.txt"
    f.write_text("ROMEO: what light through yonder window breaks")
    out = _gen(run, capsys, "--method", "pcw", "--context-file", str(f), "--window", "12",
               "--prompt", " Q")
    assert out.startswith(" Q")
    for extra in (["--method", "pcw", "--prompt", "x"],                      # zero windows
                  ["--method", "pcw", "--context-file", str(f), "--prompt", "x"],
                  ["--method", "pcw", "--context", "a" * 60, "--prompt", "x"]):  # > max_len
        assert cli.main(["generate", str(run), "--max-new-tokens", "2", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, err
