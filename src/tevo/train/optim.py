"""AdamW with decoupled weight decay on the right parameters, and the learning-rate schedule.

Papers: Decoupled Weight Decay Regularization (Loshchilov & Hutter, 2019) — AdamW;
SGDR (Loshchilov & Hutter, 2017) — cosine decay; linear warm-up as in GPT / BERT.

Weight decay is applied to matrices only: biases, normalisation gains (and other 1-D
parameters) and embedding tables are exempt unless ``train.no_decay`` says otherwise
(``no_decay: [bias, norm]`` decays embeddings too).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import NORMS

NO_DECAY_CHOICES = ("bias", "norm", "embedding")
_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm,
               getattr(nn, "RMSNorm", nn.LayerNorm))


def param_category(module: nn.Module, name: str, p: nn.Parameter) -> str:
    """embedding | bias | norm | weight."""
    if isinstance(module, nn.Embedding):
        return "embedding"
    if name == "bias":
        return "bias"
    norm_types = _NORM_TYPES + tuple(e.obj for e in NORMS.entries() if isinstance(e.obj, type))
    if isinstance(module, norm_types) or p.ndim < 2:
        return "norm"
    return "weight"


def param_groups(model: nn.Module, weight_decay: float, no_decay=NO_DECAY_CHOICES) -> list[dict]:
    """Two AdamW groups: decayed and not. Each parameter is counted once (tied weights belong
    to the module that registered them first, e.g. the token embedding)."""
    for c in no_decay:
        if c not in NO_DECAY_CHOICES:
            raise ConfigError("train.no_decay", c, NO_DECAY_CHOICES)
    decay, keep, seen = [], [], set()
    for mod in model.modules():
        for name, p in mod.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            (keep if param_category(mod, name, p) in no_decay else decay).append(p)
    groups = [{"params": decay, "weight_decay": float(weight_decay), "name": "decay"},
              {"params": keep, "weight_decay": 0.0, "name": "no_decay"}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, tcfg, device_type: str = "cpu") -> torch.optim.Optimizer:
    betas = tuple(float(b) for b in tcfg.betas)
    if len(betas) != 2:
        raise ConfigError("train.betas", tcfg.betas, why="expected two numbers")
    groups = param_groups(model, tcfg.weight_decay, tcfg.no_decay)
    if device_type in ("cuda", "cpu"):          # one fused kernel: several times faster per step
        try:
            return torch.optim.AdamW(groups, lr=float(tcfg.lr), betas=betas, fused=True)
        except (RuntimeError, TypeError):
            pass
    return torch.optim.AdamW(groups, lr=float(tcfg.lr), betas=betas)


class Schedule:
    """lr(step): linear warm-up over ``warmup`` steps, then cosine / linear decay to
    ``min_lr_ratio · lr`` at ``steps`` (or constant). With a time budget the decay follows
    whichever is further along, the step count or the elapsed time."""

    KINDS = ("cosine", "linear", "constant")

    def __init__(self, lr: float, steps: int, warmup: int = 0, kind: str = "cosine",
                 min_lr_ratio: float = 0.1, max_seconds: float | None = None):
        if kind not in self.KINDS:
            raise ConfigError("train.schedule", kind, self.KINDS)
        self.lr, self.steps, self.warmup = float(lr), int(steps), int(warmup)
        self.kind, self.min_ratio, self.max_seconds = kind, float(min_lr_ratio), max_seconds

    def progress(self, step: int, elapsed: float | None = None) -> float:
        p = (step - self.warmup) / max(1, self.steps - self.warmup)
        if self.max_seconds and elapsed is not None:
            p = max(p, elapsed / self.max_seconds)
        return min(max(p, 0.0), 1.0)

    def __call__(self, step: int, elapsed: float | None = None) -> float:
        """Learning rate of update ``step`` (0-based)."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        p = self.progress(step, elapsed)
        if self.kind == "cosine":
            f = self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * p))
        elif self.kind == "linear":
            f = 1 - (1 - self.min_ratio) * p
        else:
            f = 1.0
        return self.lr * f

    def state_dict(self) -> dict:
        return {"lr": self.lr, "steps": self.steps, "warmup": self.warmup, "kind": self.kind,
                "min_lr_ratio": self.min_ratio}
