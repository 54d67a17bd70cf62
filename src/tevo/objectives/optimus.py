"""Optimus' sentence-VAE objective (Li et al., 2020, §4.2, eq. 4-7): the ELBO with an annealed
β and a per-dimension free-bits threshold λ.

    KL_i = E_x[ ½ (μ_i² + σ_i² − 1 − log σ_i²) ]              (closed-form Gaussian KL, batch mean)
    L    = Σ_t CE(x_t | x_<t, z) + β(step) · Σ_i max(λ, KL_i)  (per sentence)

Here the loss is normalised by the scored tokens (Σ CE + β · B · Σ_i max(λ, KL_i)) / N_tokens,
the per-sentence ELBO divided by the tokens per sentence: same optimum, the usual lr scale.
β schedule (``schedule``): constant; linear (0 → β over ``anneal_steps``); cyclical (Fu et
al., 2019, as in the Optimus code): every ``anneal_steps`` steps, β = 0 for the first
``ratio_zero`` of the cycle, rises linearly to β over the next ``ratio_increase``, then holds.
The step is the model's count of training calls (``kl_steps``, saved with the weights; one per
micro-batch: with train.grad_accum > 1 it counts micro-batches, a simplification).
Metrics: ``loss`` = reconstruction CE per token; ``kl`` = KL per sentence (Σ_i KL_i, nats);
``kl_dim_i`` = KL_i for each latent dimension; ``active_units`` = dimensions with
Var_x(μ_i) > 0.01 within the batch (Burda et al., 2016; per batch, then averaged: a simplification
of the whole-set statistic); ``beta``. A collapsed posterior shows as KL_i ≈ 0 and 0 active units.
Complexity: O(n V) for the softmax + O(k) for the KL.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..registry import OBJECTIVES
from .base import IGNORE, Objective, aux_of, exact_sum, token_metrics, unwrap

ACTIVE_THRESHOLD = 0.01


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, σ²) || N(0, 1)) per element: ½ (μ² + σ² − 1 − log σ²)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def _number(name: str, v, lo: float, hi: float | None = None, why: str = "") -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) \
        and v >= lo and (hi is None or v <= hi)
    if not ok:
        raise ConfigError(f"objective.{name}", v,
                          why=why or f"expected a number >= {lo}"
                                     f"{'' if hi is None else f' and <= {hi}'}")
    return float(v)


@OBJECTIVES.register(
    "optimus", paper="Optimus: Organizing Sentences via Pre-trained Modeling of a Latent Space "
                     "(Li et al., 2020)",
    equation="eq. 4-7: L = Σ_t CE(x_t|x_<t, z) + β(step) Σ_i max(λ, KL(q(z_i|x) || N(0, 1)))",
    complexity=("O(n V) + O(k)", "O(n V) + O(k)"),
    test="tests/papers/test_models_optimus.py::test_elbo_terms_equal_hand_computation")
class OptimusELBO(Objective):
    """Reconstruction cross-entropy + annealed β · free-bits KL; reports KL per dimension."""

    data_format = "lm"
    reports_bits = False            # the reconstruction CE is conditioned on z: not a density

    def __init__(self, beta: float = 1.0, free_bits: float = 0.5, schedule: str = "cyclical",
                 anneal_steps: int = 1000, ratio_zero: float = 0.5, ratio_increase: float = 0.25):
        self.beta = _number("beta", beta, 0.0)
        self.free_bits = _number("free_bits", free_bits, 0.0,
                                 why="λ, the free-bits threshold per latent dimension, must be "
                                     "a number >= 0 (paper: 0.5)")
        if schedule not in ("constant", "linear", "cyclical"):
            raise ConfigError("objective.schedule", schedule, ["constant", "linear", "cyclical"])
        self.schedule = schedule
        if not isinstance(anneal_steps, int) or isinstance(anneal_steps, bool) \
                or anneal_steps < 1:
            raise ConfigError("objective.anneal_steps", anneal_steps,
                              why="expected an integer >= 1")
        self.anneal_steps = anneal_steps
        self.ratio_zero = _number("ratio_zero", ratio_zero, 0.0, 1.0)
        self.ratio_increase = _number("ratio_increase", ratio_increase, 0.0, 1.0)
        if self.ratio_zero + self.ratio_increase > 1.0:
            raise ConfigError("objective.ratio_increase", ratio_increase,
                              why=f"ratio_zero + ratio_increase must be <= 1 (ratio_zero = "
                                  f"{ratio_zero})")

    def beta_at(self, step: int) -> float:
        """β(step) under the configured schedule."""
        if self.schedule == "constant":
            return self.beta
        if self.schedule == "linear":
            return self.beta * min(1.0, step / self.anneal_steps)
        t = (step % self.anneal_steps) / self.anneal_steps               # position in the cycle
        if t < self.ratio_zero:
            return 0.0
        if self.ratio_increase == 0.0:
            return self.beta
        return self.beta * min(1.0, (t - self.ratio_zero) / self.ratio_increase)

    def check_model(self, model) -> None:
        m = unwrap(model)
        if not (hasattr(m, "encode") and hasattr(m, "latent_size")):
            raise ConfigError("objective", "optimus",
                              why=f"optimus needs a sentence VAE (model.arch=optimus); this one "
                                  f"is {type(m).__name__}")

    def elbo(self, out, labels: Tensor, beta: float) -> tuple[Tensor, dict]:
        """The loss and metrics from a model output holding mu, logvar (B, k)."""
        logits = out.logits.float()                                   # (B, n, V)
        ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                             reduction="none")
        metrics = token_metrics(logits, labels, exact_sum(ce))
        n = metrics["loss"][1]
        mu, logvar = out.extra["mu"].float(), out.extra["logvar"].float()
        B, k = mu.shape
        kl_dim = gaussian_kl(mu, logvar).mean(0)                      # (k,) KL_i, batch mean
        kl_clamped = kl_dim.clamp(min=self.free_bits)                 # max(λ, KL_i)
        aux = aux_of(out)
        loss = (ce.sum() + beta * B * kl_clamped.sum()) / n.clamp(min=1) + aux
        var = mu.detach().var(0, unbiased=False) if B > 1 else torch.zeros_like(kl_dim)
        metrics["kl"] = (kl_dim.detach().sum().double() * B, torch.tensor(B))
        for i in range(k):
            metrics[f"kl_dim_{i}"] = (kl_dim[i].detach().double() * B, torch.tensor(B))
        metrics["active_units"] = ((var > ACTIVE_THRESHOLD).sum().double(), 1)
        metrics["beta"] = (torch.tensor(float(beta), dtype=torch.float64), 1)
        metrics["aux"] = (aux.detach(), 1)
        return loss, metrics

    def __call__(self, model, batch):
        m = unwrap(model)
        step = int(m.kl_steps) if hasattr(m, "kl_steps") else 0
        out = model(batch["input_ids"], attention_mask=batch.get("attention_mask"))
        if model.training and hasattr(m, "kl_steps"):
            m.kl_steps += 1
        return self.elbo(out, batch["labels"], self.beta_at(step))

    def derived(self, means: dict, stats: dict | None = None) -> dict:
        out = {}
        if "loss" in means:
            out["perplexity"] = math.exp(min(means["loss"], 50.0))
        return out
