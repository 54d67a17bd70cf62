"""Hourglass: a decoder-only language model that shortens the sequence in its middle layers.

Paper: Hierarchical Transformers Are More Efficient Language Models (Nawrot, Tworkowski,
Tyrolski, Kaiser, Wu, Szegedy, Michalewski, 2022), §3 and Algorithm 1:

    x = PreVanillaLayers(embed(tokens))                      # full resolution, n tokens
    x' = ShortenFactor_k(ShiftRight(x, k − 1))               # n/k tokens
    x' = ShortenedLayers(x')
    x = x + Upsample_k(x')                                   # residual at full resolution
    x = PostVanillaLayers(x)

The shift right by k − 1 before shortening keeps the model causal: shortened token g sums
the (shifted) tokens gk … gk + k − 1, i.e. original tokens gk − k + 1 … gk, and is upsampled
to positions gk … gk + k − 1, all of which are ≥ gk. Shortening is the paper's linear
pooling (concatenate k tokens, project kd → d) or average pooling; upsampling is repetition
or the paper's linear upsampling (project d → kd, split into k tokens). A length that k does
not divide is padded at the end (the pad lies after every real token: nothing leaks back).
Groups are aligned to absolute indices, so left padding changes which tokens share a group;
padded positions enter the pooling as zeros.
The paper's attention upsampling and its multi-level hourglasses (several nested factors)
are not implemented: one level, ``extra: {factor, pre_layers, post_layers}``.

Complexity: with L_pre + L_post full layers and L_mid shortened ones, attention costs
O((L_pre + L_post) n² d + L_mid (n/k)² d) and the FFNs O((L_pre + L_post) n d² + L_mid (n/k) d²)
— the saving the paper claims at equal depth (measured by ``tevo bench model_speed``:
training-step time and peak memory against the plain decoder). No incremental decoding state
(generation re-reads the context).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import ConfigError
from ..nn.context import MixerContext
from ..registry import MODELS
from .block import BlockStack
from .common import (ModelOutput, build_norm, build_position, check_ids, extend_mask,
                     extra_options, init_weights, token_positions)

OPTIONS = {"factor": (2, int, 1, None), "pre_layers": (1, int, 0, None),
           "post_layers": (1, int, 0, None), "shorten": ("linear", ("linear", "avg")),
           "upsample": ("linear", ("linear", "repeat"))}


def shift_right(x: Tensor, k: int) -> Tensor:
    """(B, n, d) → (B, n, d) with x[t − k] at t and zeros for t < k."""
    return F.pad(x, (0, 0, k, 0))[:, : x.shape[1]] if k else x


@MODELS.register(
    "hourglass", paper="Hierarchical Transformers Are More Efficient Language Models (Nawrot "
                       "et al., 2022)",
    equation="Alg. 1: x = Pre(x); x' = Shorten_k(ShiftRight_{k-1}(x)); x' = Mid(x'); "
             "x = x + Upsample_k(x'); x = Post(x)",
    complexity=("(L_pre+L_post)·O(n²d) + L_mid·O((n/k)²d)", "O(n d) per full layer, "
                "O(n d / k) per shortened layer"),
    test="tests/papers/test_models_hourglass.py::"
         "test_changing_token_t_changes_no_logit_before_t_for_every_factor",
    tiny={"mixer": {"name": "softmax", "heads": 2}, "position": "rope", "n_layers": 3,
          "extra": {"factor": 3, "pre_layers": 1, "post_layers": 0}})
class HourglassLM(nn.Module):
    """Decoder-only LM: full-resolution pre layers → causal shortening by k → shortened layers
    → upsampling + residual → full-resolution post layers → tied head."""

    default_causal = True
    has_decoder = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        o = extra_options(cfg, "hourglass", OPTIONS)
        self.k, n_pre, n_post = o["factor"], o["pre_layers"], o["post_layers"]
        n_mid = cfg.n_layers - n_pre - n_post
        if n_mid < 1:
            raise ConfigError("model.n_layers", cfg.n_layers,
                              why=f"must exceed pre_layers + post_layers = {n_pre + n_post}: "
                                  f"it counts the shortened layers too")
        if cfg.causal is False:
            raise ConfigError("model.causal", False, why="hourglass is a decoder-only "
                              "(causal) language model")
        self.causal = True
        self.shorten, self.upsample = o["shorten"], o["upsample"]
        d = cfg.d_model
        self.embed = nn.Embedding(cfg.vocab_size, d)
        self.pos = build_position(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.pre = BlockStack(cfg, True, n_pre) if n_pre else None
        self.mid = BlockStack(cfg, True, n_mid)
        self.post = BlockStack(cfg, True, n_post) if n_post else None
        self.down = nn.Linear(self.k * d, d) if self.shorten == "linear" else None
        self.up = nn.Linear(d, self.k * d) if self.upsample == "linear" else None
        last = self.post or self.mid
        self.norm = build_norm(cfg) if (cfg.final_norm if cfg.final_norm is not None
                                        else last.final_norm) else None
        self.head = nn.Linear(d, cfg.vocab_size, bias=cfg.head_bias)
        init_weights(self, cfg, cfg.n_layers)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight

    def _stack(self, stack, x, mask, positions, aux: list):
        ctx = MixerContext(causal=True, key_padding_mask=mask, positions=positions, pos=self.pos)
        x = stack(x, ctx)[0]
        aux.append(ctx.aux_loss())
        return x

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                return_hidden: bool = False, **_) -> ModelOutput:
        """input_ids (B, n), attention_mask (B, n) True = real token → logits (B, n, V)."""
        check_ids(input_ids, self.cfg.vocab_size)
        B, n = input_ids.shape
        dev, k = input_ids.device, self.k
        mask = extend_mask(None, attention_mask, B, n, dev)
        positions = token_positions(None, mask, B, n, dev)
        x = self.embed(input_ids)
        if "input" in self.pos.hooks:
            x = self.pos.embed(x, positions)
        x = self.drop(x)
        aux: list = []
        if self.pre is not None:
            x = self._stack(self.pre, x, mask, positions, aux)           # (B, n, d)
        if mask is not None:                   # padded positions contribute nothing
            x = x * mask[..., None].to(x.dtype)
        m = -(-n // k)                                                    # groups: ceil(n / k)
        s = F.pad(shift_right(x, k - 1), (0, 0, 0, m * k - n))            # (B, m k, d)
        s = s.view(B, m, k, -1)
        s = self.down(s.flatten(2)) if self.down is not None else s.mean(2)   # (B, m, d)
        s_mask = None
        if mask is not None:                   # a group is real if one of its tokens is
            sm = F.pad(shift_right(mask[..., None].float(), k - 1), (0, 0, 0, m * k - n))
            s_mask = sm.view(B, m, k).amax(-1) > 0
        s_pos = token_positions(None, s_mask, B, m, dev)
        s = self._stack(self.mid, s, s_mask, s_pos, aux)                  # (B, m, d)
        if self.up is not None:
            u = self.up(s).view(B, m * k, -1)                             # (B, m k, d)
        else:
            u = s.repeat_interleave(k, dim=1)
        x = x + u[:, :n]
        if self.post is not None:
            x = self._stack(self.post, x, mask, positions, aux)
        if self.norm is not None:
            x = self.norm(x)
        return ModelOutput(self.head(x), None, sum(aux), x if return_hidden else None)
