"""The kNN-LM datastore on disk, and the commands that build and use it.

Paper: Generalization through Memorization: Nearest Neighbor Language Models (Khandelwal et al.,
2020), §2–3: one pass of the trained model over its training split stores, for every position,
the context vector f(c_i) and the next token w_i; at test time the model's distribution is
interpolated with the neighbours' (``tevo.models.knn_lm``).

    tevo knn build RUN [--out DIR] [--max-tokens N] [--batch-size B]
        writes DIR (default RUN/knn) = keys.npy (N, d) float32 and values.npy (N,) int64, both
        memory-mapped numpy files (not pickles), and manifest.json naming the run, the sha256 of
        the checkpoint's weights, the tokenizer's fingerprint, N and d; a progress bar on a
        terminal. The folder is written under a temporary name and renamed at the end, and an
        existing one is refused, so nothing is overwritten.
    tevo eval RUN --knn DIR [--knn-lambda λ --knn-k K --knn-temperature T --knn-index flat|ivf|hnsw]
        bits per character on the split with and without the datastore.

A datastore made by another run (weights), another tokenizer, or a missing / truncated file is a
one-line InputError. Search: ``tevo.nn.knn.KNNIndex`` (faiss exact flat by default, IVF/HNSW on
request, exact torch search when faiss is absent).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, InputError
from ..nn.knn import KNNIndex

FORMAT = "tevo-knn-datastore/1"
MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_fingerprint(run) -> dict:
    """What a datastore depends on: the weights (sha256 of the checkpoint's weights file) and the
    tokenizer (its saved file, or its spec and vocabulary size)."""
    from ..train.checkpoint import WEIGHTS
    tok_file = Path(run.run_dir) / "tokenizer.json"
    tok = (_sha256(tok_file) if tok_file.exists() else
           hashlib.sha256(f"{run.cfg.data.tokenizer}:{run.cfg.model.vocab_size}".encode())
           .hexdigest())
    return {"weights_sha256": _sha256(Path(run.checkpoint) / WEIGHTS), "tokenizer": tok}


class Datastore:
    """Keys (N, d) and next tokens (N,) memory-mapped from a datastore folder, searched by a
    ``KNNIndex`` (squared L2): ``search(queries (M, d), k) -> (distances (M, k), tokens (M, k))``."""

    def __init__(self, path, index: str = "flat", backend: str = "auto", nlist: int = 64,
                 nprobe: int = 8):
        self.path = Path(path)
        man = self.path / MANIFEST
        if not man.exists():
            raise InputError(f"{self.path}: no kNN datastore here (missing {MANIFEST}); build one "
                             f"with `tevo knn build RUN`")
        try:
            self.manifest = json.loads(man.read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"{man}: unreadable manifest ({e})") from None
        if self.manifest.get("format") != FORMAT:
            raise InputError(f"{man}: not a {FORMAT} manifest")
        n, d = int(self.manifest["n"]), int(self.manifest["d"])
        self.keys = self._open("keys", (n, d), np.float32)
        self.values = self._open("values", (n,), np.int64)
        self.index = KNNIndex(d, index, "l2", backend, nlist=nlist, nprobe=nprobe,
                              field="knn")
        for s in range(0, n, 65536):
            self.index.add(np.asarray(self.keys[s:s + 65536]))

    def _open(self, name: str, shape: tuple, dtype):
        f = self.path / self.manifest[name]
        if not f.exists():
            raise InputError(f"{f}: missing datastore file")
        try:
            a = np.load(f, mmap_mode="r")
        except (ValueError, OSError) as e:
            raise InputError(f"{f}: truncated or damaged datastore file ({e})") from None
        if a.shape != shape or a.dtype != dtype:
            raise InputError(f"{f}: holds {a.dtype}{tuple(a.shape)}, the manifest says "
                             f"{np.dtype(dtype)}{shape} (truncated or from another build)")
        return a

    def check_run(self, run) -> None:
        """One-line errors when this datastore was built by another model or tokenizer."""
        fp = run_fingerprint(run)
        if fp["tokenizer"] != self.manifest.get("tokenizer"):
            raise InputError(f"{self.path}: built with another tokenizer than {run.run_dir} "
                             f"(run {self.manifest.get('run')})")
        if fp["weights_sha256"] != self.manifest.get("weights_sha256"):
            raise InputError(f"{self.path}: built by another model than {run.run_dir} @ "
                             f"{Path(run.checkpoint).name} (run {self.manifest.get('run')}, "
                             f"weights {self.manifest.get('weights_sha256', '?')[:12]})")
        if int(self.manifest["d"]) != run.cfg.model.d_model:
            raise InputError(f"{self.path}: keys of size {self.manifest['d']}, the model has "
                             f"d_model {run.cfg.model.d_model}")

    def search(self, queries, k: int):
        dist, ids = self.index.search(queries, k)
        return dist, torch.from_numpy(np.asarray(self.values[ids.numpy().ravel()])
                                      .reshape(ids.shape))


@torch.no_grad()
def build_datastore(run, out=None, max_tokens: int | None = None, batch_size: int = 16,
                    progress: bool = True) -> Path:
    """One pass of the run's model over its training split in windows of data.seq_len (each
    position's final hidden state -> its next token). Returns the datastore folder."""
    model = run.model
    if getattr(model, "memory", None) is not None:
        raise ConfigError("model.memory", "set", why="kNN-LM keys come from a plain forward "
                                                     "pass; this run has a segment memory")
    if run.objective.data_format != "lm" or "train" not in run.data.streams:
        raise InputError(f"{run.run_dir}: kNN-LM needs a text language-model run")
    out = Path(out) if out is not None else Path(run.run_dir) / "knn"
    if out.exists():
        raise InputError(f"{out} exists; remove it or pass another --out (nothing overwritten)")
    if max_tokens is not None and max_tokens < 1:
        raise ConfigError("--max-tokens", max_tokens, why="an integer >= 1")
    tokens = np.asarray(run.data.streams["train"].tokens, dtype=np.int64)
    L = run.data.seq_len
    starts = list(range(0, len(tokens) - 1, L))
    n_pos = sum(min(L, len(tokens) - 1 - s) for s in starts)
    if max_tokens is not None:
        n_pos = min(n_pos, int(max_tokens))
    d = run.cfg.model.d_model
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        keys = np.lib.format.open_memmap(tmp / "keys.npy", "w+", np.float32, (n_pos, d))
        vals = np.lib.format.open_memmap(tmp / "values.npy", "w+", np.int64, (n_pos,))
        bar = _Bar(n_pos, progress)
        done, dev = 0, run.device
        for b in range(0, len(starts), batch_size):
            if done >= n_pos:
                break
            rows = [tokens[s:s + L + 1] for s in starts[b:b + batch_size]]
            groups = [[r for r in rows if len(r) == L + 1]] + [[r] for r in rows
                                                               if 2 <= len(r) < L + 1]
            for g in groups:                     # full windows together, a short tail alone
                if not g or done >= n_pos:
                    continue
                ids = torch.as_tensor(np.stack(g), device=dev)           # (b, L + 1)
                h = model(ids[:, :-1], return_hidden=True).hidden.float().cpu().numpy()
                h, nxt = h.reshape(-1, d), ids[:, 1:].cpu().numpy().reshape(-1)
                take = min(len(h), n_pos - done)
                keys[done:done + take] = h[:take]
                vals[done:done + take] = nxt[:take]
                done += take
            bar.update(done)
        bar.close()
        keys.flush()
        vals.flush()
        del keys, vals
        man = {"format": FORMAT, "run": str(Path(run.run_dir).resolve()),
               "checkpoint": Path(run.checkpoint).name, **run_fingerprint(run),
               "split": "train", "n": n_pos, "d": d, "keys": "keys.npy", "values": "values.npy",
               "key": "final hidden state (input of the output layer)", "metric": "l2"}
        (tmp / MANIFEST).write_text(json.dumps(man, indent=1))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


class _Bar:
    """A rich progress bar on a terminal, else nothing."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
            self.bar = Progress("knn build", BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn())
            self.task = self.bar.add_task("knn", total=total)
            self.bar.start()

    def update(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def knn_model(run, store: Datastore, lam: float, k: int, temperature: float):
    """The run's model as a kNN-LM (same weights) with the datastore attached."""
    import dataclasses

    from ..models.knn_lm import KNNLM
    store.check_run(run)
    mc = dataclasses.replace(run.cfg.model, arch="knn_lm",
                             extra={**(run.cfg.model.extra or {}), "knn_lambda": lam,
                                    "knn_k": k, "knn_temperature": temperature})
    m = KNNLM(mc).to(run.device)
    m.load_state_dict(run.model.state_dict())
    m.eval()
    m.attach_datastore(store)
    return m


def evaluate_with_knn(run, args) -> dict:
    """Bits per character on the split with and without the datastore (same windows)."""
    from ..train.evaluate import evaluate
    store = Datastore(args.knn, index=args.knn_index)
    tc = run.cfg.train
    bs = args.batch_size or max(1, tc.batch_size // tc.grad_accum)
    split = args.split or "val"
    base = evaluate(run.model, run.objective, run.data, split, bs, args.max_batches, run.device,
                    tc.precision)
    km = knn_model(run, store, args.knn_lambda, args.knn_k, args.knn_temperature)
    knn = evaluate(km, run.objective, run.data, split, bs, args.max_batches, run.device,
                   tc.precision)
    return {"run_dir": str(run.run_dir), "split": split, "datastore": str(store.path),
            "datastore_size": int(store.manifest["n"]), "knn_lambda": args.knn_lambda,
            "knn_k": args.knn_k, "knn_temperature": args.knn_temperature,
            "loss": base["loss"], "bits_per_char": base.get("bits_per_char"),
            "knn_loss": knn["loss"], "knn_bits_per_char": knn.get("bits_per_char"),
            "eval_tokens": base.get("eval_tokens")}


def _build(args) -> int:
    from ..train.run import load_run
    run = load_run(args.run_dir, args.device)
    out = build_datastore(run, args.out, args.max_tokens, args.batch_size,
                          progress=not args.json)
    man = json.loads((out / MANIFEST).read_text())
    print(json.dumps({"datastore": str(out), **man}, indent=1) if args.json else
          f"wrote {out}: {man['n']} keys of size {man['d']} from {run.run_dir}")
    return 0


def _eval_knn(args, plain_eval) -> int:
    if not args.knn:
        return plain_eval(args)
    from ..train.run import load_run
    run = load_run(args.run_dir, args.device)
    out = evaluate_with_knn(run, args)
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"{out['split']}: {out['bits_per_char']:.4f} bits/char without the datastore, "
              f"{out['knn_bits_per_char']:.4f} with it (λ={out['knn_lambda']}, k={out['knn_k']}, "
              f"{out['datastore_size']} keys)")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("knn", help="kNN-LM datastores (Khandelwal et al., 2020)")
    ks = p.add_subparsers(dest="knn_command", required=True)
    b = ks.add_parser("build", help="write a run's datastore of (context vector, next token)")
    b.add_argument("run_dir")
    b.add_argument("--out", default=None, help="datastore folder (default RUN/knn)")
    b.add_argument("--max-tokens", type=int, default=None)
    b.add_argument("--batch-size", type=int, default=16)
    b.add_argument("--device", default="cpu")
    b.add_argument("--json", action="store_true")
    b.set_defaults(fn=_build)
    ev = sub.choices.get("eval")            # `tevo eval RUN --knn DIR`: the same command, + kNN
    if ev is not None:
        ev.add_argument("--knn", default=None, help="a datastore folder: report bits/char with "
                                                    "and without it (kNN-LM)")
        ev.add_argument("--knn-lambda", type=float, default=0.25)
        ev.add_argument("--knn-k", type=int, default=32)
        ev.add_argument("--knn-temperature", type=float, default=1.0)
        ev.add_argument("--knn-index", default="flat", choices=["flat", "ivf", "hnsw"])
        plain = ev.get_default("fn")
        ev.set_defaults(fn=lambda args: _eval_knn(args, plain))
