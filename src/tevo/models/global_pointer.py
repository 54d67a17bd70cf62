"""GlobalPointer: span scoring for nested and flat named-entity recognition.

Papers: Su Jianlin, "GlobalPointer: a unified way to handle nested and flat NER" (2021) and
"Efficient GlobalPointer: fewer parameters, better results" (2021); reference code: bert4keras
``layers.GlobalPointer`` / ``EfficientGlobalPointer``.

GlobalPointer, for every entity type α and every span (start i, end j) of the encoder's hidden
states h:
    q_{i,α} = W_{q,α} h_i + b,  k_{j,α} = W_{k,α} h_j + b,
    s_α(i, j) = (R_i q_{i,α})ᵀ (R_j k_{j,α}) / √D,
with R_i the RoPE rotation of position i (``tevo.positions.rope``, interleaved pairs as in
bert4keras), so that s depends on the content and on j − i only. Spans with j < i and spans
touching padding are masked (score −1e12, as in the reference). A span (α, i, j) is predicted
when s_α(i, j) > 0, so nested and overlapping spans are all decoded.
Efficient GlobalPointer: one shared projection [q; k] = W h (the reference's ``p_dense``),
rotated and scored once, plus per-type start and end biases from a dense layer on [q; k]:
    s_α(i, j) = (R_i q_i)ᵀ (R_j k_j) / √D + (w_{α,start}ᵀ [q_i; k_i] + w_{α,end}ᵀ [q_j; k_j]) / 2.
The 1/√D temperature is the reference code's (the blog post writes the bare dot product).
Complexity: O(T n² D) time and O(T n²) memory for the scores on top of the encoder
(efficient: O(n² D + T n D)); parameters 2·T·D·d (efficient: 2·D·d + 4·T·D).

``model.extra``: ``gp_types`` (entity types T, integer >= 1), ``gp_head_size`` (D, an even
integer >= 2, default 64), ``gp_efficient`` (bool, default false). The model is the
bidirectional encoder with this head instead of the MLM head: ``logits`` are the span scores
(B, T, n, n). A causal encoder is refused: a span score must read the tokens after its start.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import ConfigError
from ..positions.rope import RotaryPosition
from ..registry import MODELS
from .common import ModelOutput
from .encoder import Encoder

NEG = -1e12                      # the reference's mask value: e^NEG = 0, finite in fp32/bf16


def span_mask(mask: Tensor | None, B: int, n: int, device) -> Tensor:
    """(B, 1, n, n) bool: True where (i, j) is a valid span (j >= i, both real tokens)."""
    valid = torch.ones(n, n, dtype=torch.bool, device=device).triu()    # j >= i
    valid = valid.expand(B, 1, n, n)
    if mask is not None:
        m = mask.bool()
        valid = valid & m[:, None, :, None] & m[:, None, None, :]
    return valid


class GlobalPointerHead(nn.Module):
    """Span scores (B, T, n, n) from hidden states (B, n, d)."""

    def __init__(self, d_model: int, types: int, head_size: int = 64, efficient: bool = False,
                 init_std: float = 0.02):
        super().__init__()
        if isinstance(types, bool) or not isinstance(types, int) or types < 1:
            raise ConfigError("model.extra.gp_types", types,
                              why="the number of entity types, an integer >= 1")
        if isinstance(head_size, bool) or not isinstance(head_size, int) or head_size < 2 \
                or head_size % 2:
            raise ConfigError("model.extra.gp_head_size", head_size,
                              why="an even integer >= 2 (RoPE rotates pairs of channels)")
        if not isinstance(efficient, bool):
            raise ConfigError("model.extra.gp_efficient", efficient, [True, False])
        self.types, self.head_size, self.efficient = types, head_size, efficient
        D = head_size
        if efficient:
            self.p_dense = nn.Linear(d_model, 2 * D)              # shared [q; k]
            self.q_dense = nn.Linear(2 * D, 2 * types)            # per-type start/end biases
        else:
            self.dense = nn.Linear(d_model, types * 2 * D)        # per-type [q; k]
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, init_std)
                nn.init.zeros_(m.bias)
        # fixed sinusoidal rotation (bert4keras SinusoidalPositionEmbedding: interleaved pairs)
        self.rope = RotaryPosition(D, layout="interleaved")

    def forward(self, h: Tensor, mask: Tensor | None = None,
                positions: Tensor | None = None) -> Tensor:
        B, n, _ = h.shape
        T, D = self.types, self.head_size
        if positions is None:
            positions = torch.arange(n, device=h.device).unsqueeze(0).expand(B, n)
        if self.efficient:
            p = self.p_dense(h)                                   # (B, n, 2D)
            q, k = p[..., 0::2], p[..., 1::2]                     # (B, n, D) each
            q = self.rope.apply(q.unsqueeze(1), positions)        # (B, 1, n, D)
            k = self.rope.apply(k.unsqueeze(1), positions)
            s = q @ k.transpose(-1, -2) / D ** 0.5                # (B, 1, n, n)
            bias = self.q_dense(p).transpose(1, 2) / 2            # (B, 2T, n)
            s = s + bias[:, 0::2, None, :] + bias[:, 1::2, :, None]   # end j, start i
        else:
            p = self.dense(h).view(B, n, T, 2 * D).transpose(1, 2)    # (B, T, n, 2D)
            q, k = p[..., :D], p[..., D:]
            q, k = self.rope.apply(q, positions), self.rope.apply(k, positions)
            s = q @ k.transpose(-1, -2) / D ** 0.5                # (B, T, n, n)
        valid = span_mask(mask, B, n, h.device)
        return s.masked_fill(~valid, NEG)


def decode_spans(scores: Tensor, threshold: float = 0.0) -> list[set[tuple[int, int, int]]]:
    """Every span above ``threshold``: per batch row, the set of (type, start, end) with
    s_α(start, end) > threshold (nested and overlapping spans included)."""
    out = [set() for _ in range(scores.shape[0])]
    for b, t, i, j in (scores > threshold).nonzero().tolist():
        out[b].add((t, i, j))
    return out


@MODELS.register(
    "global_pointer",
    paper="GlobalPointer: a unified way to handle nested and flat NER (Su, 2021); Efficient "
          "GlobalPointer (Su, 2021)",
    equation="s_α(i, j) = (R_i W_{q,α} h_i)ᵀ (R_j W_{k,α} h_j)/√D, j >= i; efficient: shared "
             "q, k plus per-type start/end biases; predict every (α, i, j) with s > 0",
    complexity=("encoder + O(T n² D)", "O(T n²) scores"),
    test="tests/papers/test_models_global_pointer.py::test_scores_equal_the_per_span_equation",
    tiny={"mixer": {"name": "softmax", "heads": 2}, "extra": {"gp_types": 3, "gp_head_size": 8}})
class GlobalPointerModel(Encoder):
    """A bidirectional encoder whose output is GlobalPointer span scores (B, T, n, n)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        if self.causal:
            raise ConfigError("model.causal", True, [False],
                              why="a GlobalPointer span score reads the tokens after the span's "
                                  "start; use a bidirectional encoder")
        ex = cfg.extra or {}
        # the MLM / NSP heads are replaced by the span head
        del self.mlm_transform, self.head, self.pooler, self.nsp
        self.span_head = GlobalPointerHead(cfg.d_model, ex.get("gp_types", 1),
                                           ex.get("gp_head_size", 64),
                                           ex.get("gp_efficient", False), cfg.init_std)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, positions: Tensor | None = None,
                state=None, return_hidden: bool = True, attn_mask: Tensor | None = None
                ) -> ModelOutput:
        """input_ids (B, n) -> logits = span scores (B, T, n, n), masked spans at −1e12."""
        h, ctx = self.encode_hidden(input_ids, attention_mask, token_type_ids, positions,
                                    attn_mask)
        scores = self.span_head(h, attention_mask, ctx.positions)
        return ModelOutput(scores, None, ctx.aux_loss(), h, {"aux": ctx.aux})
