"""What every objective shares: the call contract, metric sums and derived metrics.

    loss, metrics = objective(model, batch)

``loss`` is the scalar to back-propagate (the model's auxiliary losses included);
``metrics`` maps a name to ``(sum, count)`` tensors, so that micro-batches, evaluation batches
and DDP ranks combine exactly (token-weighted) before ``sum / count`` is reported. ``loss`` in
the metrics is always the plain cross-entropy in nats per scored token.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import ConfigError

IGNORE = -100
LN2 = math.log(2.0)


class Objective:
    """Base: declares the batch format it consumes and the special tokens it needs."""

    data_format = "lm"                  # lm | mlm | seq2seq (see tevo.data.pipeline)
    specials: tuple = ()                # special tokens the tokenizer must provide
    reports_bits = False                # True: loss is a density of the text (bits/char apply)

    def setup(self, vocab_size: int, special_ids: dict) -> "Objective":
        """Bind the vocabulary (called once the tokenizer or task is known)."""
        missing = [s for s in self.specials if s not in special_ids]
        if missing:
            raise ConfigError("objective", self.registry_name,
                              why=f"the data provides no {', '.join(missing)} token")
        self.vocab_size, self.special_ids = int(vocab_size), dict(special_ids)
        return self

    def check_model(self, model) -> None:
        """Raise a ConfigError if the model cannot be trained with this objective."""

    def attach(self, model) -> None:
        """Add the objective's own trainable modules (ELECTRA's generator, a classification
        head) to ``model`` as ``model.objective_modules``, so the one optimiser trains them and
        checkpoints hold them. Called after ``check_model``, before the optimiser is built and
        before weights are loaded. Default: nothing."""

    @staticmethod
    def add_modules(model, **modules) -> None:
        """``model.objective_modules[name] = module`` on the model's device."""
        from torch import nn
        dev = next(model.parameters()).device
        if not hasattr(model, "objective_modules"):
            model.objective_modules = nn.ModuleDict()
        for k, m in modules.items():
            model.objective_modules[k] = m.to(dev)

    def __call__(self, model, batch: dict) -> tuple[Tensor, dict]:
        raise NotImplementedError

    def derived(self, means: dict, stats: dict | None = None) -> dict:
        """Perplexity, bits per token and, for a text density with split statistics,
        bits per character and per byte (bits/token ÷ characters/token)."""
        out = {}
        if "loss" in means:
            loss = means["loss"]
            out["perplexity"] = math.exp(min(loss, 50.0))
            if self.reports_bits:
                out["bits_per_token"] = loss / LN2
                if stats:
                    out["bits_per_char"] = loss / LN2 / stats["chars_per_token"]
                    out["bits_per_byte"] = loss / LN2 / stats["bytes_per_token"]
        return out


def unwrap(model):
    """The module under DDP / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def check_stream_masks(model, name: str) -> None:
    """ConfigError unless ``model`` runs several attention streams as one sequence: an
    encoder-style forward taking ``attn_mask`` whose every self-mixer honours it."""
    import inspect
    if getattr(type(model), "has_decoder", False) or getattr(model, "causal", True):
        raise ConfigError("objective", name,
                          why=f"{name} needs a bidirectional encoder (model.arch=bert) whose "
                              f"attention masks it sets; this one is {type(model).__name__}"
                              f"{', causal' if getattr(model, 'causal', False) else ''}")
    if "attn_mask" not in inspect.signature(model.forward).parameters:
        raise ConfigError("objective", name,
                          why=f"{type(model).__name__} takes no attn_mask (two-stream support)")
    bad = sorted({getattr(type(m), "registry_name", type(m).__name__)
                  for m in model.modules()
                  if any(c.__name__ == "Mixer" for c in type(m).__mro__)
                  and not getattr(m, "cross", False)
                  and not getattr(m, "takes_attn_mask", False)})
    if bad:
        raise ConfigError("model.mixer", bad[0], ["softmax", "mqa", "gqa"],
                          why=f"{name} runs its attention streams through an explicit mask that "
                              f"mixer {bad[0]!r} does not honour (no two-stream support)")


def aux_of(out) -> Tensor:
    aux = out.aux_loss
    if not isinstance(aux, Tensor):
        aux = torch.tensor(float(aux), device=out.logits.device)
    return aux.float()


def exact_sum(values: Tensor) -> Tensor:
    """Sum of per-token float32 values in float64: exact in practice, so a logged loss does
    not depend on the reduction order (which can vary with memory alignment across runs)."""
    return values.detach().double().sum()


def token_metrics(logits: Tensor, labels: Tensor, ce_sum: Tensor, exact: bool | None = None
                  ) -> dict:
    """loss / accuracy over scored tokens; exact match per sequence (``exact=None``: when some
    tokens are unscored, i.e. a task with a target span)."""
    mask = labels != IGNORE
    n = mask.sum()
    pred = logits.argmax(-1)
    hit = (pred == labels) & mask
    m = {"loss": (ce_sum.detach(), n), "accuracy": (hit.sum(), n)}
    if exact is None:
        exact = not bool(mask.all())
    if exact and labels.dim() == 2:
        rows = mask.any(1)
        ok = (hit | ~mask).all(1) & rows
        m["exact_match"] = (ok.sum(), rows.sum())
    return m


class MetricSums:
    """Running (sum, count) per metric name; ``means()`` gives sum / count."""

    def __init__(self):
        self.sums: dict[str, list] = {}

    def add(self, metrics: dict) -> None:
        for k, (s, c) in metrics.items():
            s = s.detach().double() if isinstance(s, Tensor) else float(s)
            c = c.detach().double() if isinstance(c, Tensor) else float(c)
            if k in self.sums:
                self.sums[k][0] = self.sums[k][0] + s
                self.sums[k][1] = self.sums[k][1] + c
            else:
                self.sums[k] = [s, c]

    def all_reduce(self, device=None) -> None:
        """Sum over DDP ranks (every rank must hold the same names)."""
        import torch.distributed as dist
        if not (dist.is_available() and dist.is_initialized()) or not self.sums:
            return
        names = sorted(self.sums)
        t = torch.tensor([[float(self.sums[k][0]), float(self.sums[k][1])] for k in names],
                         dtype=torch.float64, device=device)
        dist.all_reduce(t)
        self.sums = {k: [t[i, 0].item(), t[i, 1].item()] for i, k in enumerate(names)}

    def means(self) -> dict:
        out = {}
        for k, (s, c) in self.sums.items():
            c = float(c)
            out[k] = float(s) / c if c else float("nan")
        return out

    def count(self, name: str = "loss") -> float:
        return float(self.sums[name][1]) if name in self.sums else 0.0
