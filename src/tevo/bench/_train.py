"""A small, plain training loop for the studies that train (quality, extrapolation, recall).

Only ``tevo.build_model``, the corpus and task registries and torch are used: AdamW, linear
warm-up then cosine decay, gradient clipping, fixed steps, optional bf16 autocast. It is kept
deliberately minimal so that every variant of a study is trained by exactly the same code; the
full ``Trainer`` (checkpoints, resume, DDP) is not needed for runs of a few minutes.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from functools import lru_cache

import torch
import torch.nn.functional as F

IGNORE = -100


# -- data -------------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def corpus_bytes(corpus: str = "shakespeare") -> dict:
    """{"train", "val", "test"} of a registered corpus as uint8 byte tensors (the byte
    tokenizer: vocabulary 256, so bits per token are bits per character on ASCII text)."""
    from ..registry import CORPORA
    splits = CORPORA.build(corpus).splits()
    return {k: torch.frombuffer(bytearray(v.encode("utf-8")), dtype=torch.uint8)
            for k, v in splits.items()}


def lm_batch(tokens: torch.Tensor, starts: torch.Tensor, seq_len: int) -> dict:
    """Windows tokens[s : s + seq_len + 1] → input_ids (B, n) and next-token labels (B, n)."""
    idx = starts.view(-1, 1) + torch.arange(seq_len + 1).view(1, -1)     # (B, n + 1)
    w = tokens[idx].long()
    return {"input_ids": w[:, :-1].contiguous(), "labels": w[:, 1:].contiguous()}


class LMBatches:
    """Random training windows; batch ``step`` depends only on (seed, step)."""

    def __init__(self, tokens: torch.Tensor, seq_len: int, batch: int, seed: int = 0):
        self.tokens, self.seq_len, self.batch, self.seed = tokens, int(seq_len), int(batch), seed
        if len(tokens) < seq_len + 2:
            raise ValueError(f"corpus too short ({len(tokens)} tokens) for windows of {seq_len}")

    def __call__(self, step: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        starts = torch.randint(0, len(self.tokens) - self.seq_len - 1, (self.batch,), generator=g)
        return lm_batch(self.tokens, starts, self.seq_len)


def eval_batches(tokens: torch.Tensor, seq_len: int, n_windows: int, batch: int) -> list[dict]:
    """Fixed windows spread evenly over a split (the same for every variant)."""
    last = len(tokens) - seq_len - 1
    if last < 0:
        raise ValueError(f"split too short ({len(tokens)} tokens) for windows of {seq_len}")
    n_windows = max(1, min(n_windows, last + 1))
    starts = torch.linspace(0, last, n_windows).long()
    return [lm_batch(tokens, starts[i:i + batch], seq_len) for i in range(0, n_windows, batch)]


class TaskBatches:
    """Batches of a registered synthetic task (``TASKS``), seeded by (seed, step)."""

    def __init__(self, task, batch: int, seed: int = 0):
        self.task, self.batch, self.seed = task, int(batch), seed

    def __call__(self, step: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return self.task.batch(self.batch, g, "lm")


# -- loop -------------------------------------------------------------------------------------
def _autocast(precision: str, device):
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return nullcontext()


def loss_of(model, batch: dict, precision: str = "fp32", device="cpu") -> torch.Tensor:
    ids = batch["input_ids"].to(device)
    labels = batch["labels"].to(device)
    with _autocast(precision, device):
        out = model(ids)
    logits = out.logits.float()
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=IGNORE)
    aux = out.aux_loss
    return loss + (aux.float() if torch.is_tensor(aux) else aux)


def lr_at(step: int, steps: int, lr: float, warmup: int, min_ratio: float = 0.1) -> float:
    """Linear warm-up to ``lr`` then cosine decay to ``min_ratio · lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def make_optimizer(model, lr: float, weight_decay: float = 0.1):
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def train(model, batches, steps: int, lr: float, *, warmup_frac: float = 0.1,
          weight_decay: float = 0.1, grad_clip: float = 1.0, precision: str = "fp32",
          device="cpu", deadline: float | None = None) -> dict:
    """Train for ``steps`` steps of ``batches(step)``; stops early (and says so) on a
    non-finite loss or when time.monotonic() passes ``deadline``."""
    model.to(device).train()
    opt = make_optimizer(model, lr, weight_decay)        # (the first one imports torch._dynamo)
    warmup = max(1, int(warmup_frac * steps))
    tokens, losses, status = 0, [], "ok"
    t0 = time.perf_counter()
    step = 0
    for step in range(steps):
        if deadline is not None and time.monotonic() > deadline:
            status = f"stopped at step {step} (time limit)"       # see ``stopped``
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup)
        batch = batches(step)
        loss = loss_of(model, batch, precision, device)
        if not torch.isfinite(loss):
            status = f"diverged at step {step}"
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        tokens += batch["input_ids"].numel()
        losses.append(float(loss.detach()))
    else:
        step = steps
    wall = time.perf_counter() - t0
    return {"steps": step if status != "ok" else steps, "tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall if wall > 0 else float("nan"),
            "final_train_loss": losses[-1] if losses else float("nan"), "status": status,
            "loss_curve": losses[:: max(1, len(losses) // 50)]}


@torch.no_grad()
def evaluate_loss(model, batches: list[dict], precision: str = "fp32", device="cpu") -> float:
    """Mean cross-entropy (nats) per scored token."""
    model.eval()
    total, count = 0.0, 0
    for b in batches:
        ids, labels = b["input_ids"].to(device), b["labels"].to(device)
        with _autocast(precision, device):
            logits = model(ids).logits.float()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                               ignore_index=IGNORE, reduction="sum")
        total += float(loss)
        count += int((labels != IGNORE).sum())
    model.train()
    return total / max(count, 1)


@torch.no_grad()
def evaluate_accuracy(model, batches: list[dict], precision: str = "fp32", device="cpu") -> float:
    """Fraction of scored positions whose arg-max prediction is the label."""
    model.eval()
    right, count = 0, 0
    for b in batches:
        ids, labels = b["input_ids"].to(device), b["labels"].to(device)
        with _autocast(precision, device):
            pred = model(ids).logits.argmax(-1)
        m = labels != IGNORE
        right += int((pred[m] == labels[m]).sum())
        count += int(m.sum())
    model.train()
    return right / max(count, 1)


def stopped(result: dict) -> bool:
    """Training was cut by the deadline: the run is incomplete, not a result."""
    return result["status"].startswith("stopped")


def bits(nats: float) -> float:
    return nats / math.log(2)
