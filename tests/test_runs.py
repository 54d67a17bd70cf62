"""Run folders and checkpoints under misuse: two writers never share a folder, readers pin the
checkpoint they read while a trainer prunes, damaged checkpoints fall back to an intact one,
a non-finite evaluation is an error (and --json stays valid JSON), crash leftovers are
removed, an interrupted run exits 130, and ``eval --data path=FILE`` scores the whole file."""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tevo import cli
from tevo.data.corpora import ShakespeareCorpus
from tevo.train import checkpoint as ckpt
from tevo.train.checkpoint import MANIFEST, WEIGHTS, list_checkpoints, open_checkpoint
from tevo.train.claim import LOCK, claim_existing, claim_new

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    p = tmp_path_factory.mktemp("corpus") / "part.txt"
    p.write_text(ShakespeareCorpus().splits()["train"][:20_000])
    return p


def tiny(corpus, out, *extra) -> list[str]:
    return [f"data.path={corpus}", "data.seq_len=16", "model.d_model=16", "model.n_layers=1",
            "model.max_len=16", "model.mixer={name: softmax, heads: 2}", "train.batch_size=4",
            "train.steps=8", "train.warmup=2", "train.log_every=1", "train.eval_every=0",
            "train.ckpt_every=4", "train.keep_last=2", "train.final_eval_batches=2",
            "train.sample_tokens=0", "train.progress=false", "train.plot=false",
            "train.precision=fp32", "train.threads=1", f"train.out_dir={out}", *extra]


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """A finished tiny run with checkpoints at steps 4 and 8."""
    run = tmp_path_factory.mktemp("runs") / "base"
    assert cli.main(["train", *tiny(corpus, run)]) == 0
    assert [p.name for p in list_checkpoints(run)] == ["step_00000004", "step_00000008"]
    return run


def _copy(trained, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns(LOCK))
    return run


def _eval_json(capsys, run, *extra) -> tuple[int, dict, str]:
    capsys.readouterr()
    rc = cli.main(["eval", str(run), "--json", "--max-batches", "2", *extra])
    cap = capsys.readouterr()

    def no_nan(c):
        raise AssertionError(f"bare {c} in --json output")
    return rc, json.loads(cap.out, parse_constant=no_nan) if cap.out else {}, cap.err


# -- 1. one writer per run folder ----------------------------------------------------------------
# other processes are forked (no second torch import): they claim as a separate `tevo train` does
FORK = multiprocessing.get_context("fork")


def _hold(run, ready, done):
    claim_existing(run)
    ready.set()
    done.wait(60)


def _claim(out, i, start, q):
    start.wait(30)
    d, _ = claim_new(out)
    (d / "mine").write_text(str(i))
    q.put(str(d))


def test_a_folder_in_use_is_never_shared(tmp_path, capsys):
    run = tmp_path / "busy"
    run.mkdir()
    ready, done = FORK.Event(), FORK.Event()
    p = FORK.Process(target=_hold, args=(run, ready, done))
    p.start()
    try:
        assert ready.wait(60)
        # a new run given the same out_dir gets the next free name, even though run is empty
        q, claim = claim_new(run)
        assert q == tmp_path / "busy-2"
        claim.release()
        # a resume of the folder in use is one line naming the holder
        (run / "config.yaml").write_text("model: {d_model: 16}\n")
        assert cli.main(["train", "--resume", str(run)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"error: run {run} is in use by pid {p.pid}; wait for it to finish or " \
                      f"stop it first"
    finally:
        done.set()
        p.join(60)
    claim_existing(run).release()              # the lock went with its process


def test_concurrent_writers_claim_different_folders(tmp_path):
    out, start, q = tmp_path / "same", FORK.Event(), FORK.Queue()
    procs = [FORK.Process(target=_claim, args=(out, i, start, q)) for i in range(4)]
    for p in procs:
        p.start()
    start.set()
    dirs = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(set(dirs)) == 4, dirs
    assert sorted((Path(d) / "mine").read_text() for d in dirs) == ["0", "1", "2", "3"]


# -- 2. readers pin the checkpoint they read ------------------------------------------------------
def test_a_checkpoint_pruned_while_resolving_is_replaced_by_the_next(trained, tmp_path,
                                                                     monkeypatch):
    run = _copy(trained, tmp_path)
    real = ckpt.list_checkpoints
    stale = real(run) + [run / "checkpoints" / "step_00000012"]      # listed, then pruned
    calls = []

    def listing(r):
        calls.append(1)
        return stale if len(calls) == 1 else real(r)
    monkeypatch.setattr(ckpt, "list_checkpoints", listing)
    ck, blobs = open_checkpoint(run, (WEIGHTS,))
    assert ck.name == "step_00000008" and len(calls) == 2 and blobs[WEIGHTS]


def test_eval_while_training_prunes(corpus, tmp_path):
    """A trainer writes a checkpoint every step and keeps one; readers never fail."""
    run = tmp_path / "live"
    p = subprocess.Popen([sys.executable, "-m", "tevo", "train",
                          *tiny(corpus, run, "train.steps=400", "train.ckpt_every=1",
                                "train.keep_last=1", "train.log_every=50")],
                         env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while not list_checkpoints(run) and time.time() - t0 < 120:
            time.sleep(0.05)
        from tevo.train.run import load_run
        steps = set()
        for _ in range(15):
            if p.poll() is not None:
                break
            steps.add(load_run(run).step)        # FileNotFoundError here before pinning
        assert steps
    finally:
        p.kill()
        p.wait()


# -- 3. checksums, fallback, non-finite evaluation ------------------------------------------------
def test_damaged_latest_checkpoint_falls_back_with_a_warning(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    manifest = json.loads((run / "checkpoints/step_00000008" / MANIFEST).read_text())
    assert set(manifest["files"]) == {WEIGHTS, "state.pt"}
    w = run / "checkpoints/step_00000008" / WEIGHTS
    data = bytearray(w.read_bytes())
    data[-64:] = b"\x7f" * 64                                  # overwritten bytes (NaN-ish)
    w.write_bytes(bytes(data))
    rc, out, err = _eval_json(capsys, run)
    assert rc == 0 and out["step"] == 4 and "step_00000004" in out["checkpoint"]
    lines = [x for x in err.splitlines() if x.startswith("warning:")]
    assert len(lines) == 2 and "checksum" in lines[0] and "step_00000004" in lines[1]
    w.write_bytes(bytes(data[: len(data) // 2]))              # truncated
    rc, out, err = _eval_json(capsys, run)
    assert rc == 0 and out["step"] == 4 and "truncated" in err
    # resume falls back the same way (and continues from step 4)
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run)]) == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 8
    # every checkpoint damaged: one line, exit 2
    for ck in list_checkpoints(run):
        (ck / WEIGHTS).write_bytes(b"garbage")
    rc, out, err = _eval_json(capsys, run)
    assert rc == 2 and err.strip().startswith("error: every checkpoint") and "\n" not in \
        err.strip()


def test_truncated_checkpoint_without_manifest_falls_back(trained, tmp_path, capsys):
    """Checkpoints written before manifests (or by tevo convert) are checked for a whole file."""
    run = _copy(trained, tmp_path)
    for ck in list_checkpoints(run):
        (ck / MANIFEST).unlink()
    w = run / "checkpoints/step_00000008" / WEIGHTS
    w.write_bytes(w.read_bytes()[:-100])
    rc, out, err = _eval_json(capsys, run)
    assert rc == 0 and out["step"] == 4 and "not a complete safetensors file" in err


def test_non_finite_evaluation_is_an_error_and_json_stays_valid(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    from tevo.train.run import load_run
    r = load_run(run)
    with torch.no_grad():
        for prm in r.model.parameters():
            prm.fill_(float("nan"))
    ckpt.save_checkpoint(run, 9, r.model, {"step": 9})         # intact file, NaN weights
    rc, out, err = _eval_json(capsys, run)
    assert rc != 0 and out["loss"] is None and "not finite" in err
    capsys.readouterr()
    assert cli.main(["eval", str(run), "--max-batches", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "not finite" in err and "\n" not in err


# -- 4. crash leftovers, SIGINT -------------------------------------------------------------------
def test_leftovers_are_removed_and_failed_runs_leave_nothing(corpus, trained, tmp_path,
                                                             capsys):
    run = _copy(trained, tmp_path)
    tmp = run / "checkpoints" / ".tmp_step_00000012_99999"
    tmp.mkdir()
    (tmp / WEIGHTS).write_bytes(b"half")
    assert cli.main(["train", "--resume", str(run), "train.steps=10"]) == 0
    assert not list((run / "checkpoints").glob(".tmp*"))
    # fails after the data is tokenized (max_len < seq_len is known only then): no folder left
    out = tmp_path / "failed"
    assert cli.main(["train", *tiny(corpus, out, "model.max_len=8")]) == 2
    assert "model.max_len" in capsys.readouterr().err
    assert not out.exists()


# -- 5. eval --data path=FILE: the whole file --------------------------------------------------
def test_eval_other_text_scores_the_whole_file(trained, tmp_path, capsys):
    text = ShakespeareCorpus().splits()["val"][:3000]
    f = tmp_path / "notes.txt"
    f.write_text(text)
    rc, out, _ = _eval_json(capsys, trained, "--data", f"path={f}", "--max-batches", "1000")
    n = len(text.encode())                               # bytes tokenizer: one token per byte
    assert rc == 0 and out["split"] == "all" and n - 17 <= out["eval_tokens"] <= n
    rc, part, _ = _eval_json(capsys, trained, "--data", f"path={f}", "--split", "val",
                             "--max-batches", "1000")
    assert rc == 0 and part["eval_tokens"] < 0.1 * n          # a split only when asked
    short = tmp_path / "short.txt"
    short.write_text("ROMEO: hi\n")
    capsys.readouterr()
    assert cli.main(["eval", str(trained), "--data", f"path={short}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "too short for one window" in err and "\n" not in err
