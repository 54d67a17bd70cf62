"""Perceiver and Perceiver AR as whole models, around the ``perceiver_cross`` mixer.

Papers: Perceiver: General Perception with Iterative Attention (Jaegle et al., 2021) and
Perceiver IO (Jaegle et al., 2022) — a learned latent array cross-attends to the inputs, a
latent self-attention stack of L layers runs at a cost independent of the input length, and
every input position reads the latents back; Perceiver AR (Hawthorne et al., 2022), §3 — the
latents are the last m positions of a long context, their cross-attention is causal (latent i
sees inputs up to its own position), the latent stack is causal, and only those m positions
are predicted.

Both models have one layer: the ``perceiver_cross`` mixer (``tevo.mixers.attention
.perceiver_cross``) with ``latent_layers = model.n_layers`` and ``latents = model.extra
.latents``; the latent blocks carry their own MLPs, so the layer has no feed-forward.
``perceiver_ar`` marks in ``ModelOutput.extra["scored"]`` the positions it predicts (the last
m of each sequence, those that are real tokens); the language-modelling objective scores only
those, as the paper trains. ``perceiver`` is a bidirectional encoder with BERT's heads.

Complexity: O(n m d) for the cross-attention + L·O(m² d) for the latent stack (flat in n).
No incremental decoding (which positions are latents moves with the end of the sequence).
"""
from __future__ import annotations

import copy

from torch import Tensor

from ..config import ModelConfig
from ..errors import ConfigError
from ..registry import MODELS, split_spec
from .common import ModelOutput, extra_options
from .encoder import Encoder
from .lm import LanguageModel

OPTIONS = {"latents": (128, int, 1, None), "mlp_mult": (4, int, 1, None),
           "mlm_activation": ("gelu", ("gelu", "relu", "gelu_new", "tanh"))}


def perceiver_config(cfg: ModelConfig, arch: str, causal: bool) -> ModelConfig:
    """The model's one layer: perceiver_cross with the config's heads, latents and depth."""
    o = extra_options(cfg, arch, OPTIONS)
    _, kw = split_spec(cfg.mixer, "model.mixer")
    heads = kw.get("heads", 4)
    if set(kw) - {"heads"}:
        raise ConfigError("model.mixer", cfg.mixer,
                          why=f"{arch} builds its own perceiver_cross layer: give only heads")
    if causal and cfg.max_len < o["latents"]:
        raise ConfigError("model.extra.latents", o["latents"],
                          why=f"must be <= model.max_len = {cfg.max_len} (the latents are the "
                              f"last positions of the context)")
    inner = copy.deepcopy(cfg)
    inner.mixer = {"name": "perceiver_cross", "latents": o["latents"], "heads": heads,
                   "latent_layers": cfg.n_layers, "mlp_mult": o["mlp_mult"]}
    inner.n_layers, inner.layout, inner.layers = 1, "a", {}
    inner.extra = {k: v for k, v in (cfg.extra or {}).items() if k == "mlm_activation"}
    return inner


@MODELS.register(
    "perceiver_ar", paper="General-purpose, long-context autoregressive modeling with Perceiver "
                          "AR (Hawthorne et al., 2022)",
    equation="§3: Z = X_{n-m:} + CausalCrossAttn(X_{n-m:}, X); Z ← L × causal latent blocks; "
             "predict the last m positions only",
    complexity=("O(n m d + L m² d)", "O(n m + L m²)"),
    test="tests/papers/test_models_perceiver.py::"
         "test_perceiver_ar_is_causal_and_scores_only_its_latent_positions",
    tiny={"mixer": {"name": "softmax", "heads": 2}, "position": "learned",
          "extra": {"latents": 4, "mlp_mult": 2}})
class PerceiverAR(LanguageModel):
    """Long causal context → the last m positions as latents → causal latent stack → logits."""

    def __init__(self, cfg: ModelConfig):
        if cfg.causal is False:
            raise ConfigError("model.causal", False, why="perceiver_ar is autoregressive; use "
                              "arch perceiver for a bidirectional encoder")
        self.outer_cfg = cfg
        super().__init__(perceiver_config(cfg, "perceiver_ar", True))
        self.n_latents = self.cfg.mixer["latents"]
        self.cfg = cfg

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, **kw
                ) -> ModelOutput:
        out = super().forward(input_ids, attention_mask=attention_mask, **kw)
        B, n = input_ids.shape
        scored = input_ids.new_zeros(B, n, dtype=bool)
        scored[:, max(0, n - self.n_latents):] = True
        if attention_mask is not None:
            scored &= attention_mask.bool()
        out.extra["scored"] = scored
        return out



@MODELS.register(
    "perceiver", paper="Perceiver: General Perception with Iterative Attention (Jaegle et al., "
                       "2021); Perceiver IO (Jaegle et al., 2022)",
    equation="Z = Z₀ + CrossAttn(Z₀, X); Z ← L × latent blocks; y_i = CrossAttn(x_i, Z)",
    complexity=("O(n m d + L m² d)", "O(n m + L m²)"),
    test="tests/papers/test_models_perceiver.py::"
         "test_perceiver_latent_depth_costs_the_same_at_every_length",
    tiny={"mixer": {"name": "softmax", "heads": 2}, "position": "learned",
          "extra": {"latents": 4, "mlp_mult": 2}})
class Perceiver(Encoder):
    """Bidirectional encoder: learned latents read the input, L latent blocks, tokens read back."""

    def __init__(self, cfg: ModelConfig):
        if cfg.causal:
            raise ConfigError("model.causal", True, why="perceiver is bidirectional; use arch "
                              "perceiver_ar for autoregressive modelling")
        super().__init__(perceiver_config(cfg, "perceiver", False))
        self.cfg = cfg
