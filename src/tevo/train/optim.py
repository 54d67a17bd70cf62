"""AdamW with decoupled weight decay on the right parameters, and the learning-rate schedule.

Papers: Decoupled Weight Decay Regularization (Loshchilov & Hutter, 2019) — AdamW;
SGDR (Loshchilov & Hutter, 2017) — cosine decay; linear warm-up as in GPT / BERT.

Weight decay is applied to matrices only: biases, normalisation gains (and other 1-D
parameters) and embedding tables are exempt unless ``train.no_decay`` says otherwise
(``no_decay: [bias, norm]`` decays embeddings too).

Components may ask for parameter groups of their own with ``optimizer_groups()`` (the
product-key memory's values, Lample et al. 2019, §4.2: their own learning rate and a sparse
Adam). Such a group keeps its weight decay; a group ``lr`` becomes a scale of the schedule's
learning rate (``lr / train.lr``, so warm-up and decay apply to it too); ``sparse: true`` puts
it in ``torch.optim.SparseAdam`` (only the rows a step read are updated), beside the AdamW of
everything else, in one ``CombinedOptimizer``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

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


def component_groups(model: nn.Module, base_lr: float) -> list[dict]:
    """The parameter groups components ask for (``optimizer_groups()``), with ``lr`` turned into
    ``lr_scale`` relative to the run's learning rate."""
    out = []
    for m in model.modules():
        if m is model or not hasattr(m, "optimizer_groups"):
            continue
        for g in m.optimizer_groups():
            g = dict(g)
            if "lr" in g:
                g["lr_scale"] = float(g.pop("lr")) / float(base_lr)
            g.setdefault("name", type(m).__name__)
            out.append(g)
    return out


class CombinedOptimizer(torch.optim.Optimizer):
    """Several optimisers stepped as one (AdamW + SparseAdam): ``param_groups`` lists all their
    groups, so the schedule sets every learning rate; the state dict holds each one's."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = list(optimizers)
        self.defaults = {}
        self.state = {}

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    def step(self, closure=None):
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        if len(state.get("optimizers", ())) != len(self.optimizers):
            raise ConfigError("optimizer state", f"{len(state.get('optimizers', ()))} parts",
                              why=f"this model's optimiser has {len(self.optimizers)} parts")
        for o, st in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(st)

    def __repr__(self) -> str:
        return f"CombinedOptimizer({', '.join(type(o).__name__ for o in self.optimizers)})"


def build_optimizer(model: nn.Module, tcfg, device_type: str = "cpu") -> torch.optim.Optimizer:
    betas = tuple(float(b) for b in tcfg.betas)
    if len(betas) != 2:
        raise ConfigError("train.betas", tcfg.betas, why="expected two numbers")
    eps = float(tcfg.adam_eps)
    extra = component_groups(model, float(tcfg.lr))
    own = {id(p) for g in extra for p in g["params"]}
    groups = [{**g, "params": [p for p in g["params"] if id(p) not in own]}
              for g in param_groups(model, tcfg.weight_decay, tcfg.no_decay)]
    groups = [g for g in groups if g["params"]]
    dense = groups + [{k: v for k, v in g.items() if k != "sparse"} for g in extra
                      if not g.get("sparse")]
    sparse = [{k: v for k, v in g.items() if k not in ("sparse", "weight_decay")}
              for g in extra if g.get("sparse")]
    adamw = None
    if device_type in ("cuda", "cpu"):          # one fused kernel: several times faster per step
        try:
            adamw = torch.optim.AdamW(dense, lr=float(tcfg.lr), betas=betas, eps=eps,
                                      fused=True)
        except (RuntimeError, TypeError):
            adamw = None
    if adamw is None:
        adamw = torch.optim.AdamW(dense, lr=float(tcfg.lr), betas=betas, eps=eps)
    if not sparse:
        return adamw
    return CombinedOptimizer([adamw, torch.optim.SparseAdam(sparse, lr=float(tcfg.lr),
                                                            betas=betas, eps=eps)])


def has_sparse_gradients(model: nn.Module) -> bool:
    return any(getattr(m, "sparse", False) for m in model.modules()
               if isinstance(m, nn.Embedding))


@torch.no_grad()
def clip_gradients(parameters, max_norm: float) -> Tensor:
    """Global-norm clipping (like ``torch.nn.utils.clip_grad_norm_``) that also takes sparse
    gradients: their norm is that of the coalesced values, so duplicated rows count once.
    Returns the total norm before clipping."""
    params = [p for p in parameters if p.grad is not None]
    if not any(p.grad.is_sparse for p in params):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    sq = []
    for p in params:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
            sq.append(p.grad._values().float().pow(2).sum())
        else:
            sq.append(p.grad.float().pow(2).sum())
    total = torch.stack(sq).sum().sqrt()
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for p in params:
        if p.grad.is_sparse:
            p.grad._values().mul_(coef.to(p.grad.dtype))
        else:
            p.grad.mul_(coef.to(p.grad.dtype))
    return total


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
