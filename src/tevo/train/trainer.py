"""The one training loop: AdamW with decoupled weight decay, warm-up + cosine/linear decay,
gradient clipping and accumulation, bf16 autocast (CPU and GPU), optional ``torch.compile``,
deterministic seeding, periodic evaluation, early NaN/Inf detection, atomic checkpoints and
exact resume, DDP or FSDP (``train.distributed``) under ``torchrun``.

    summary = Trainer(load_config("default")).fit()

Batch sizes: ``train.batch_size`` is the *global* number of sequences per optimiser step; each
of the W ranks takes batch_size / W of them, in ``grad_accum`` micro-batches. So one config
trains the same way on 1 or N processes.

Exact resume: a checkpoint holds the weights, the optimiser state, the step, the data sampler's
position and every RNG state (per rank), so ``tevo train --resume RUN`` continues bit-for-bit.
A time budget (``train.max_minutes``; wall-clock, or the process's CPU time with
``train.budget_clock=cpu``) makes the schedule depend on the clock, so only step-based runs
resume exactly.

A model whose segment memory needs ordered segments (Transformer-XL's ``xl_memory``) is trained
as in its paper: the training stream is read in order in ``batch_size`` lanes, the model runs
``forward_segment`` and each lane's stop-gradient memory is carried to the next step (and into
the checkpoint); see ``tevo.train.segments``.
"""
from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from ..config import RunConfig, save_config, validate, validate_model
from ..data.pipeline import batch_to, build_data, slice_batch
from ..errors import ConfigError, InputError, TevoError
from ..objectives.base import MetricSums
from ..registry import MODELS, OBJECTIVES
from . import distributed
from .checkpoint import STATE, WEIGHTS, load_state, load_weights, open_checkpoint, \
    remove_leftovers, rng_state, save_checkpoint, set_rng_state
from .claim import claim_existing, claim_new
from .evaluate import autocast, evaluate, resolve_precision
from .log import MetricsLog, ProgressDisplay, plot_losses
from .optim import Schedule, build_optimizer, clip_gradients, has_sparse_gradients
from .segments import SegmentModel, check_segment_training, concat_memory, memory_to, \
    ordered_segments, slice_memory

CONFIG = "config.yaml"
SUMMARY = "summary.json"


class TrainingDiverged(TevoError):
    """The loss or the gradient became NaN/Inf."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def new_run_dir(out_dir) -> Path:
    """``out_dir`` if it is absent or empty, else the first free ``out_dir-2``, ``-3``, …"""
    p = Path(out_dir)
    i = 2
    q = p
    while q.exists() and (not q.is_dir() or any(q.iterdir())):
        q = p.with_name(f"{p.name}-{i}")
        i += 1
    return q


def count_params(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _check_train(cfg: RunConfig) -> None:
    """What field declarations cannot say (their types and ranges: ``validate``)."""
    validate(cfg)
    t = cfg.train
    if t.threads not in (None, "auto") and (not isinstance(t.threads, int) or t.threads < 1):
        raise ConfigError("train.threads", t.threads, why="expected null, auto or an integer >= 1")


def resolve_threads(threads) -> int | None:
    """CPU threads for training: an explicit count, None (torch's default), or ``auto``: the
    cores not already busy (1-minute load average), at least one. OpenMP threads spin while
    they wait, so on an oversubscribed CPU fewer threads train several times faster."""
    if threads is None:
        return None
    if threads != "auto":
        return int(threads)
    try:
        cores = len(os.sched_getaffinity(0))
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    return max(1, min(torch.get_num_threads(), int(cores - load + 0.5)))


class Trainer:
    """Builds data, model, optimiser from a RunConfig and trains it into a run folder."""

    def __init__(self, cfg: RunConfig, run_dir=None, resume: bool = False):
        self._claim, self._fresh = None, False
        try:
            self._init(cfg, run_dir, resume)
        except BaseException:
            self._abandon()
            raise

    def _abandon(self) -> None:
        """A run that failed before training: remove the folder this run created (it holds at
        most a tokenized copy of the data), and release the claim."""
        run_dir = getattr(self, "run_dir", None)
        if self._fresh and run_dir is not None and not (run_dir / "checkpoints").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        self.release()

    def release(self) -> None:
        """Give up the run folder's lock (at the end of ``fit``)."""
        if self._claim is not None:
            self._claim.release()
            self._claim = None

    def _init(self, cfg: RunConfig, run_dir, resume: bool) -> None:
        self.t_start = time.time()
        cfg = copy.deepcopy(cfg)
        _check_train(cfg)
        tc = cfg.train
        self.dist = d = distributed.setup(tc.device)
        self.device = d.device
        tc.precision = resolve_precision(tc.precision, self.device)     # saved resolved
        if tc.precision == "bf16" and self.device.type == "cuda" \
                and not torch.cuda.is_bf16_supported():
            raise ConfigError("train.precision", "bf16", why="this GPU has no bf16 support")
        per_rank, rem = divmod(int(tc.batch_size), d.world * int(tc.grad_accum))
        if rem or per_rank < 1:
            raise ConfigError("train.batch_size", tc.batch_size,
                              why=f"must be a multiple of grad_accum × processes = "
                                  f"{tc.grad_accum} × {d.world}")
        self.micro = per_rank
        if d.is_main:                    # claimed atomically, locked for the run's life
            if run_dir is None and not resume:
                run_dir, self._claim = claim_new(tc.out_dir)
                self._fresh = True
            else:
                run_dir = Path(tc.out_dir if run_dir is None else run_dir)
                self._fresh = not run_dir.exists()
                self._claim = claim_existing(run_dir)
            remove_leftovers(run_dir)
        self.run_dir = Path(distributed.broadcast_object(str(run_dir)))
        distributed.barrier()

        seed_everything(tc.seed)
        self.objective = OBJECTIVES.build(cfg.objective, "objective")
        self.data = build_data(cfg, self.objective, self.run_dir, d.is_main, distributed.barrier)
        self.objective.setup(self.data.vocab_size, self.data.special_ids)
        cfg.model.vocab_size = int(self.data.vocab_size)
        for k, v in getattr(self.data, "model_fields", {}).items():   # image size, channels
            setattr(cfg.model, k, v)
        need = _longest_sequence(self.data)
        if cfg.model.max_len < need:
            raise ConfigError("model.max_len", cfg.model.max_len,
                              why=f"the sequences have {need} tokens; set model.max_len>={need} "
                                  f"(or lower data.seq_len)")
        validate_model(cfg.model)
        cfg.train.out_dir = str(self.run_dir)
        self.cfg = cfg

        seed_everything(tc.seed)                     # the model's init does not depend on data
        self.model = MODELS.get(cfg.model.arch, "model.arch").obj(cfg.model).to(self.device)
        self.objective.check_model(self.model)
        self.objective.attach(self.model)            # its own modules: trained and saved too
        init = tc.extra.get("init_from")             # fine-tuning: start from these weights
        if init and not resume:
            from .checkpoint import load_weights
            load_weights(self.model, init, strict=False)
        self.fsdp = d.enabled and tc.distributed == "fsdp"
        if self.fsdp and has_sparse_gradients(self.model):
            raise ConfigError("train.distributed", "fsdp", ["ddp"],
                              why="FSDP shards dense parameters only; this model has sparse "
                                  "embedding gradients (e.g. pkm sparse: true)")
        # Transformer-XL training: lanes read in order, one memory per micro-batch of lanes
        self.segments = ordered_segments(self.model)
        if self.segments:
            check_segment_training(self.model, self.fsdp)
            self.data.read_in_order(int(tc.batch_size))
            self.memories = [None] * int(tc.grad_accum)
        if self.fsdp:                                # parameters become shards: before AdamW
            from . import fsdp
            fsdp.shard(self.model, self.device, d.world,
                       bool(tc.extra.get("find_unused_parameters", True)))
        self.optimizer = build_optimizer(self.model, tc, self.device.type)
        self.schedule = Schedule(tc.lr, tc.steps, tc.warmup, tc.schedule, tc.min_lr_ratio,
                                 None if tc.max_minutes is None else 60.0 * tc.max_minutes)
        self.step, self.tokens, self.train_time, self.elapsed0, self.wall0 = 0, 0, 0.0, 0.0, 0.0
        self.resumed_from = None
        if resume:
            self._resume()
        elif d.is_main:
            save_config(cfg, self.run_dir / CONFIG)

        self.fwd = self.model
        if self.segments:
            self.fwd = self.segment_model = SegmentModel(self.model)
        if tc.compile:
            self.fwd = torch.compile(self.fwd)
        if d.enabled and not self.fsdp:
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.fwd = DDP(self.fwd, device_ids=[self.device.index] if self.device.type == "cuda"
                           else None,
                           find_unused_parameters=bool(tc.extra.get("find_unused_parameters",
                                                                     True)))
        self.stop_requested = False
        self.saved_step = self.step if resume else None

    # -- resume ---------------------------------------------------------------------------------
    def _resume(self) -> None:
        ck, blobs = open_checkpoint(self.run_dir, (WEIGHTS, STATE))     # both verified
        if ck is None:
            raise TevoError(f"no checkpoint to resume from in {self.run_dir}")
        if not self.fsdp:
            load_weights(self.model, blobs[WEIGHTS])
        st = load_state(blobs[STATE], "cpu" if self.fsdp else self.device)
        if "optimizer" not in st or "data" not in st:
            raise TevoError(f"{ck} holds weights but no training state (a converted model?); "
                            f"it can be evaluated or fine-tuned from, not resumed")
        if self.fsdp:
            from . import fsdp
            fsdp.load_full_state(self.model, self.optimizer, ck / WEIGHTS, st["optimizer"])
        else:
            self.optimizer.load_state_dict(st["optimizer"])
        self.data.load_state_dict(st["data"])
        if self.segments and st.get("memory") is not None:      # this rank's lanes
            base, m = self.dist.rank * self.micro * self.cfg.train.grad_accum, self.micro
            self.memories = [memory_to(slice_memory(st["memory"], base + k * m,
                                                    base + (k + 1) * m), self.device)
                             for k in range(self.cfg.train.grad_accum)]
        self.step, self.tokens = int(st["step"]), int(st["tokens"])
        self.train_time, self.elapsed0 = float(st["train_time"]), float(st["elapsed"])
        self.wall0 = float(st.get("wall", 0.0))
        rngs = st["rng"]
        set_rng_state(rngs[self.dist.rank] if self.dist.rank < len(rngs) else rngs[0])
        self.resumed_from = str(ck)

    def _state(self) -> dict:
        if self.fsdp:                            # collective; gathered on rank 0
            from . import fsdp
            opt = fsdp.full_optimizer_state(self.model, self.optimizer)
        else:
            opt = self.optimizer.state_dict()
        state = {"step": self.step, "optimizer": opt,
                 "schedule": self.schedule.state_dict(), "data": self.data.state_dict(),
                 "rng": distributed.gather_objects(rng_state()), "tokens": self.tokens,
                 "train_time": self.train_time, "elapsed": self.elapsed(),
                 "wall": self.wall0 + time.time() - self.t_start, "world": self.dist.world}
        if self.segments:              # every lane's memory, in lane order (ranks, micro-batches)
            local = memory_to(concat_memory(self.memories), "cpu")
            state["memory"] = concat_memory(distributed.gather_objects(local))
        return state

    def save(self) -> Path | None:
        state = self._state()                    # collective: every rank takes part
        weights = None
        if self.fsdp:
            from . import fsdp
            weights = fsdp.full_weights(self.model)
        self.saved_step = self.step
        if not self.dist.is_main:
            return None
        return save_checkpoint(self.run_dir, self.step, self.model, state,
                               self.cfg.train.keep_last, weights)

    def elapsed(self) -> float:
        return self.elapsed0 + self.clock() - self.t_loop

    # -- one optimiser step ---------------------------------------------------------------------
    def train_step(self) -> tuple[MetricSums, float, float, int]:
        tc, d = self.cfg.train, self.dist
        lr = self.schedule(self.step, self.elapsed())
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)       # component groups scale the schedule
        batch = self.data.train_batch(int(tc.batch_size))
        n_tokens = sum(v.numel() for k, v in batch.items() if k in ("input_ids", "src_ids",
                                                                   "tgt_ids"))
        n_tokens += len(batch["images"]) if "images" in batch else 0     # images count as one
        base = d.rank * self.micro * tc.grad_accum
        sums = MetricSums()
        for k in range(tc.grad_accum):
            mb = batch_to(slice_batch(batch, base + k * self.micro, base + (k + 1) * self.micro),
                          self.device)
            last = k == tc.grad_accum - 1
            if self.fsdp:                        # reduce-scatter after the last micro-batch
                self.model.set_requires_gradient_sync(last)
            sync = nullcontext() if not d.enabled or self.fsdp or last else self.fwd.no_sync()
            if self.segments:                    # these lanes' memory from the previous step
                self.segment_model.memory = self.memories[k]
            with sync:
                with autocast(self.device, tc.precision):
                    loss, metrics = self.objective(self.fwd, mb)
                (loss / tc.grad_accum).backward()
            if self.segments:
                self.memories[k] = self.segment_model.memory
            sums.add(metrics)
        max_norm = float(tc.grad_clip) if tc.grad_clip else float("inf")
        gnorm = clip_gradients(self.model.parameters(), max_norm)
        if hasattr(gnorm, "full_tensor"):        # FSDP: the global norm, a replicated DTensor
            gnorm = gnorm.full_tensor()
        bad = ~torch.isfinite(gnorm)
        if not d.enabled:
            bad = bad | ~torch.isfinite(loss.detach())
        if bool(bad):
            raise TrainingDiverged(
                f"training diverged at step {self.step + 1}: loss {float(loss.detach()):.4g}, "
                f"gradient norm {float(gnorm):.4g} (lr {lr:.3g}); lower train.lr, raise "
                f"train.warmup, keep train.grad_clip > 0 or use train.precision=fp32")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return sums, float(gnorm), lr, n_tokens

    # -- the loop -------------------------------------------------------------------------------
    def _install_signals(self):
        if threading.current_thread() is not threading.main_thread():
            return {}
        old = {}

        def handler(signum, frame):
            if self.stop_requested:               # second Ctrl-C: stop now
                signal.signal(signal.SIGINT, signal.default_int_handler)
                raise KeyboardInterrupt
            self.stop_requested = True
            self.stop_signal = int(signum)        # the exit status says which (128 + signum)
        for s in (signal.SIGINT, signal.SIGTERM):
            old[s] = signal.signal(s, handler)
        return old

    def fit(self, stop_at: int | None = None) -> dict:
        """Train to ``train.steps`` (or the time budget), then evaluate and write the summary.
        ``stop_at``: save a checkpoint and return at that step, as an interruption would."""
        tc, d = self.cfg.train, self.dist
        # the budget's clock: wall time, or this process's CPU time (a fair budget when other
        # jobs share the cores: the run is not charged for the time it waits for one)
        self.clock = time.process_time if tc.budget_clock == "cpu" else time.time
        self.t_loop = self.clock()
        log = MetricsLog(self.run_dir, self.step if self.resumed_from else None,
                         tc.tensorboard) if d.is_main else None
        old_threads = torch.get_num_threads()
        n_threads = resolve_threads(tc.threads)
        if n_threads and self.device.type == "cpu":
            torch.set_num_threads(n_threads)
        bar = ProgressDisplay(tc.steps, self.step, tc.progress and d.is_main)
        if self.resumed_from:
            bar.message(f"resumed from {self.resumed_from} at step {self.step}")
        old_handlers = self._install_signals()
        window, w_tokens, w_time = MetricSums(), 0, 0.0
        stopped = None
        try:
            while self.step < tc.steps:
                t0 = time.time()
                sums, gnorm, lr, n_tok = self.train_step()
                dt = time.time() - t0
                self.train_time += dt
                self.tokens += n_tok
                window.add({k: v for k, v in sums.sums.items()})
                w_tokens += n_tok
                w_time += dt
                s = self.step
                bar.tick(s)
                if s % tc.log_every == 0 or s == tc.steps:
                    window.all_reduce(self.device)
                    m = window.means()
                    tps = w_tokens / max(w_time, 1e-9)
                    rec = {"step": s, "split": "train", **m, "lr": lr, "grad_norm": gnorm,
                           "tokens": self.tokens, "tokens_per_second": tps,
                           "elapsed": self.elapsed()}
                    if log:
                        log.write(rec)
                    eta = (tc.steps - s) * w_time / max(tc.log_every, 1) \
                        if s % tc.log_every == 0 else None
                    bar.update(s, f"loss {m.get('loss', float('nan')):.4f} lr {lr:.2e} "
                                  f"{tps:,.0f} tok/s", eta)
                    window, w_tokens, w_time = MetricSums(), 0, 0.0
                if tc.eval_every and s % tc.eval_every == 0 and s < tc.steps:
                    r = self.evaluate("val", tc.eval_batches or None)
                    if log:
                        log.write({"step": s, "split": "val", **r})
                    bar.message(_eval_line(s, r))
                time_up = tc.max_minutes is not None and self.elapsed() >= 60.0 * tc.max_minutes
                if d.enabled:                      # every rank takes the same decision
                    self.stop_requested = distributed.any_rank(self.stop_requested, self.device)
                    time_up = distributed.any_rank(time_up, self.device)
                if (tc.ckpt_every and s % tc.ckpt_every == 0) or self.stop_requested \
                        or s == stop_at:
                    ck = self.save()
                if self.stop_requested or s == stop_at:
                    stopped = "interrupted" if self.stop_requested else "stop_at"
                    bar.close()
                    if d.is_main:
                        print(f"stopped at step {s}; checkpoint {ck}; continue with: "
                              f"tevo train --resume {self.run_dir}", flush=True)
                    out = {"stopped": stopped, "step": s, "run_dir": str(self.run_dir),
                           "checkpoint": str(ck) if ck else None}
                    if self.stop_requested:
                        out["signal"] = getattr(self, "stop_signal", int(signal.SIGINT))
                    return out
                if time_up:
                    stopped = "time budget"
                    break
            bar.close()
            if self.saved_step != self.step:
                self.save()
            return self.finish(stopped or "steps", log)
        finally:
            self.release()
            torch.set_num_threads(old_threads)
            bar.close()
            for s, h in old_handlers.items():
                signal.signal(s, h)
            if log:
                log.close()

    def evaluate(self, split: str = "val", max_batches: int | None = None,
                 seq_len: int | None = None) -> dict:
        r = evaluate(self.model, self.objective, self.data, split, self.micro, max_batches,
                     self.device, self.cfg.train.precision, self.dist.rank, self.dist.world,
                     seq_len, lockstep=self.fsdp)
        if self.fsdp:                   # a forward without backward leaves the root unsharded
            self.model.reshard()
        return r

    def finish(self, stopped: str, log: MetricsLog | None) -> dict:
        tc = self.cfg.train
        fb = tc.final_eval_batches
        r = self.evaluate("val", None if fb is None else int(fb))
        if log:
            log.write({"step": self.step, "split": "val", "final": True, **r})
        summary = {
            "run_dir": str(self.run_dir), "steps": self.step, "stopped": stopped,
            "final_val_loss": r.get("loss"),
            "val_bits_per_char": r.get("bits_per_char"),
            "val_bits_per_byte": r.get("bits_per_byte"),
            "val_perplexity": r.get("perplexity"),
            "val_accuracy": r.get("accuracy"),
            "val_exact_match": r.get("exact_match"),
            "val_tokens": r.get("eval_tokens"),
            "final_train_loss": _last_train_loss(self.run_dir) if self.dist.is_main else None,
            "tokens": self.tokens,
            "tokens_per_second": self.tokens / max(self.train_time, 1e-9),
            "params": count_params(self.model),
            "train_seconds": self.train_time,
            "wall_seconds": self.wall0 + time.time() - self.t_start,
            "device": str(self.device), "world_size": self.dist.world,
            "threads": torch.get_num_threads() if self.device.type == "cpu" else None,
            "precision": tc.precision,
        }
        summary = {k: v for k, v in summary.items() if v is not None}
        sample = None                              # FSDP forwards are collective: every rank
        if tc.sample_tokens and self.objective.data_format == "lm" \
                and self.data.tokenizer is not None and (self.dist.is_main or self.fsdp):
            sample = self.sample(int(tc.sample_tokens))
        if self.dist.is_main:
            if sample is not None:
                summary["sample"] = sample
                (self.run_dir / "sample.txt").write_text(summary["sample"])
            if tc.plot:
                png = plot_losses(self.run_dir)
                if png:
                    summary["plot"] = str(png)
            summary["wall_seconds"] = self.wall0 + time.time() - self.t_start
            tmp = self.run_dir / f"{SUMMARY}.tmp"
            tmp.write_text(json.dumps(summary, indent=1))
            os.replace(tmp, self.run_dir / SUMMARY)
            if tc.progress:
                print(_eval_line(self.step, r, "final val"), flush=True)
                print(f"run: {self.run_dir}  ({summary['wall_seconds']:.0f} s, "
                      f"{summary['tokens_per_second']:,.0f} tok/s)", flush=True)
        return summary

    @torch.no_grad()
    def sample(self, n: int, prompt: str = "\n", temperature: float = 0.8) -> str:
        from ..inference.generate import generate
        tok = self.data.tokenizer
        ids = torch.tensor([tok.encode(prompt)], device=self.device)
        gen = torch.Generator().manual_seed(self.cfg.train.seed)
        with autocast(self.device, self.cfg.train.precision):
            out = generate(self.model, ids, n, temperature=temperature, generator=gen)
        return tok.decode(out[0, ids.shape[1]:].tolist())


def _longest_sequence(data) -> int:
    """Tokens in the longest sequence dimension of a batch (to check model.max_len)."""
    try:
        b = next(iter(data.eval_batches("val", 1, 1)))
    except StopIteration:
        raise InputError(f"the validation split is shorter than one sequence of "
                         f"{data.seq_len} tokens; lower data.seq_len or use a larger corpus"
                         ) from None
    return max(v.shape[1] for v in b.values() if hasattr(v, "shape") and v.dim() > 1)


def _last_train_loss(run_dir) -> float | None:
    from .log import read_metrics
    for r in reversed(read_metrics(run_dir)):
        if r.get("split") == "train" and isinstance(r.get("loss"), (int, float)):
            return r["loss"]
    return None


def _eval_line(step: int, r: dict, what: str = "val") -> str:
    parts = [f"{what} @ {step}: loss {r.get('loss', float('nan')):.4f}"]
    for k in ("bits_per_char", "perplexity", "accuracy", "exact_match"):
        if k in r and isinstance(r[k], float) and math.isfinite(r[k]):
            parts.append(f"{k} {r[k]:.4f}")
    return "  ".join(parts)


def train(cfg: RunConfig, run_dir=None, resume: bool = False, stop_at: int | None = None
          ) -> dict:
    """Train a RunConfig; returns the summary (or the stop record)."""
    return Trainer(cfg, run_dir, resume).fit(stop_at)
