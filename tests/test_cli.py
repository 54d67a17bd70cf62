"""CLI: train / eval / generate end to end on a tiny run; bad input is one line `error: ...`
and exit status 2."""
from __future__ import annotations

import json

import pytest
import yaml

from tevo import cli
from tevo.config import load_config
from tevo.data.corpora import ShakespeareCorpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    p = tmp_path_factory.mktemp("corpus") / "part.txt"
    p.write_text(ShakespeareCorpus().splits()["train"][:40_000])
    return p


def tiny(corpus, out, *extra) -> list[str]:
    return [f"data.path={corpus}", "data.seq_len=32", "model.d_model=32", "model.n_layers=1",
            "model.max_len=32", "model.mixer={name: softmax, heads: 2}", "train.batch_size=8",
            "model.position=learned",
            "train.steps=6", "train.warmup=2", "train.eval_every=3", "train.eval_batches=1",
            "train.final_eval_batches=2", "train.sample_tokens=20", "train.progress=false",
            "train.max_minutes=null", f"train.out_dir={out}", *extra]


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "r"
    assert cli.main(["train", *tiny(corpus, out)]) == 0     # no CONFIG: the default preset
    return out


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_train_writes_the_run_folder(run):
    pytest.importorskip("matplotlib")
    for f in ("config.yaml", "metrics.jsonl", "summary.json", "sample.txt", "loss.png"):
        assert (run / f).exists(), f
    assert list((run / "checkpoints").glob("step_*/model.safetensors"))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["name"] == "default" and cfg["model"]["vocab_size"] == 256
    assert load_config(run / "config.yaml").train.steps == 6             # the exact config
    s = json.loads((run / "summary.json").read_text())
    for k in ("final_val_loss", "val_bits_per_char", "tokens_per_second", "params",
              "wall_seconds"):
        assert k in s
    assert abs(s["val_bits_per_char"] * 0.6931471805599453 - s["final_val_loss"]) < 1e-9


def test_eval_json_and_lengths(run, capsys):
    assert cli.main(["eval", str(run), "--json", "--split", "test", "--lengths", "16,32,64",
                     "--max-batches", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["split"] == "test" and out["step"] == 6 and out["bits_per_char"] > 0
    by_len = {r["length"]: r for r in out["lengths"]}
    assert by_len[16]["loss"] > 0 and by_len[32]["loss"] > 0
    assert "learned position table" in by_len[64]["error"]            # past max_len=32
    assert cli.main(["eval", str(run), "--max-batches", "1"]) == 0
    assert "bits_per_char" in capsys.readouterr().out


def test_generate_prints_text(run, capsys):
    assert cli.main(["generate", str(run), "--prompt", "ROMEO:", "--max-new-tokens", "12",
                     "--top-k", "5"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("ROMEO:") and len(text) >= len("ROMEO:")
    assert cli.main(["generate", str(run), "--prompt", "KING", "--max-new-tokens", "8",
                     "--greedy"]) == 0
    a = capsys.readouterr().out
    assert cli.main(["generate", str(run), "--prompt", "KING", "--max-new-tokens", "8",
                     "--greedy", "--no-cache"]) == 0
    assert capsys.readouterr().out == a


def test_bad_inputs_are_one_line_errors(run, corpus, tmp_path, capsys):
    assert cli.main(["train", *tiny(tmp_path / "missing.txt", tmp_path / "a")]) == 2
    assert "no such file" in _error_line(capsys)
    (tmp_path / "empty.txt").write_text("")
    assert cli.main(["train", *tiny(tmp_path / "empty.txt", tmp_path / "b")]) == 2
    assert "empty" in _error_line(capsys)
    assert cli.main(["generate", str(run), "--prompt", "x" * 40]) == 2
    assert "longer than the model's context of 32" in _error_line(capsys)
    assert cli.main(["train", *tiny(corpus, tmp_path / "c"), "train.stepz=3"]) == 2
    assert "unknown field 'stepz'" in _error_line(capsys)
    assert cli.main(["train", *tiny(corpus, tmp_path / "d"), "data.seq_len=64"]) == 2
    assert "model.max_len" in _error_line(capsys)
    assert cli.main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "cannot resume" in _error_line(capsys)
    assert cli.main(["eval", str(tmp_path)]) == 2
    assert "not a tevo run" in _error_line(capsys)
    assert cli.main(["train", *tiny(corpus, tmp_path / "e"), "objective=nope"]) == 2
    line = _error_line(capsys)
    assert "valid: clm," in line and all(n in line for n in ("mlm", "seq2seq"))


def test_unknown_characters_for_a_chars_run(corpus, tmp_path, capsys):
    out = tmp_path / "chars"
    assert cli.main(["train", *tiny(corpus, out, "data.tokenizer=chars", "train.steps=2",
                                    "train.sample_tokens=0")]) == 0
    assert (out / "tokenizer.json").exists()
    assert cli.main(["generate", str(out), "--prompt", "東京"]) == 2
    assert "not in the chars tokenizer" in _error_line(capsys)


@pytest.mark.slow
def test_default_training_run_finishes_in_five_minutes_and_beats_the_reference(tmp_path):
    """`tevo train` with no arguments: under 5 minutes, validation bits per character on the
    held-out works well below ~2.7 (nanoGPT's small CPU char model: 1.88 nats/char)."""
    import subprocess
    import sys
    import time
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "tevo", "train", f"train.out_dir={tmp_path / 'd'}"],
                       capture_output=True, text=True, timeout=900)
    wall = time.time() - t0
    assert p.returncode == 0, p.stderr[-2000:]
    s = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert wall < 300, wall
    assert s["val_bits_per_char"] < 2.6, s


def test_eval_on_other_text_uses_the_runs_tokenizer_and_keeps_its_cache(corpus, tmp_path,
                                                                          capsys):
    run = tmp_path / "chars"
    assert cli.main(["train", *tiny(corpus, run, "data.tokenizer=chars", "train.steps=2",
                                    "train.sample_tokens=0")]) == 0
    capsys.readouterr()
    frozen = {f: (run / f).read_bytes() for f in ("tokenizer.json", "data/meta.json",
                                                  "data/val.npy")}

    def ev(*extra) -> dict:
        assert cli.main(["eval", str(run), "--json", "--max-batches", "2", *extra]) == 0
        return json.loads(capsys.readouterr().out)

    base = ev()
    assert ev("--data", f"path={corpus}", "--split", "val")["loss"] == base["loss"]   # same ids
    other = tmp_path / "other.txt"
    other.write_text(corpus.read_text()[::-1])                            # same characters
    assert ev("--data", f"data.path={other}")["loss"] != base["loss"]
    assert {f: (run / f).read_bytes() for f in frozen} == frozen          # the run is untouched
    assert cli.main(["eval", str(run), "--data", "tokenizer=bytes"]) == 2
    assert "tokenizer" in _error_line(capsys)
