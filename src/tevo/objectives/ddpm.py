"""DDPM's ε-prediction loss (Ho et al., 2020, eq. 14, "L_simple"; Algorithm 1):

    t ~ Uniform{1..T},  ε ~ N(0, I),  x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε
    L_simple = E ||ε − ε_θ(x_t, t)||²     (here the mean over pixels and images)

x_0 are the data's images (the digits are standardised to [−1, 1], the paper's scaling). The
model (``model.arch=diffusion``) owns the schedule, so sampling from a run needs nothing else.
Validation draws t and ε from a fixed seed, so a run's validation losses are comparable.
Metrics: ``loss`` = the mean squared error per pixel (summed exactly over batches and ranks).
Complexity: one denoiser call per image.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError
from ..registry import OBJECTIVES
from .base import Objective, aux_of, exact_sum

EVAL_SEED = 0


@OBJECTIVES.register(
    "ddpm", paper="Denoising Diffusion Probabilistic Models (Ho et al., 2020)",
    equation="eq. 14: L_simple = E_{t,x_0,ε} ||ε − ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t)||²",
    complexity=("one denoiser call per image", "one denoiser call per image"),
    test="tests/papers/test_models_diffusion.py::test_loss_is_eq14_simple_loss_by_hand")
class DDPMLoss(Objective):
    """ε-prediction mean squared error at a uniformly drawn timestep."""

    data_format = "image"

    def check_model(self, model) -> None:
        if not hasattr(model, "schedule") \
                or getattr(type(model), "input_kind", "") != "image":
            raise ConfigError("objective", "ddpm",
                              why=f"needs a diffusion denoiser (model.arch=diffusion); this one "
                                  f"is {type(model).__name__}")

    def simple_loss(self, model, x0: Tensor, t: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """(per-element squared errors (B, C, H, W), aux loss) at given t (B,) and ε."""
        x_t = model.schedule.q_sample(x0, t, eps)                   # eq. 4
        out = model(x_t, t)
        return (eps - out.logits.float()).pow(2), aux_of(out)

    def __call__(self, model, batch):
        x0 = batch["images"].float()                                # (B, C, H, W) in [−1, 1]
        B = x0.shape[0]
        gen = None
        if not model.training:                                      # reproducible validation
            gen = torch.Generator(device=x0.device).manual_seed(EVAL_SEED)
        t = torch.randint(1, model.schedule.T + 1, (B,), device=x0.device, generator=gen)
        eps = torch.randn(x0.shape, device=x0.device, generator=gen)
        sq, aux = self.simple_loss(model, x0, t, eps)
        loss = sq.mean() + aux
        n = torch.tensor(sq.numel(), device=x0.device)
        return loss, {"loss": (exact_sum(sq), n), "aux": (aux.detach(), 1)}

    def derived(self, means: dict, stats: dict | None = None) -> dict:
        return {}                                                   # an MSE: no perplexity
