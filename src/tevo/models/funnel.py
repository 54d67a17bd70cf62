"""Funnel-Transformer: an encoder whose blocks pool the sequence, and a decoder that upsamples
it back for token-level outputs.

Paper: Funnel-Transformer: Filtering out Sequential Redundancy for Efficient Language
Processing (Dai, Lai, Yang, Le, NeurIPS 2020), §2.2–2.3:

    h ← Block_1(h)                                          (n tokens)
    for m = 2 … M:   h' = Pool(h)                           (stride-2 mean pooling)
                     h  = LN(h' + Attn(Q = h', KV = h))     (pool-query-only: the block's
                     h  = LN(h + FFN(h))                      first layer), then its other layers
    decoder:         g  = Upsample(h_M) + h_1               (repeat each token 2^{M−1} times,
                     g  = 2 full-length layers (g)            plus the first block's output)

The output has the input's length, so the MLM and classification heads of ``bert`` apply
unchanged (``Funnel`` is an ``Encoder`` with another stack). Block sizes and decoder depth come
from ``model.extra: {blocks: [2, 2, 2], decoder_layers: 2}`` (``model.n_layers`` must equal
their sum). Pooling averages the real tokens of each window (a window of padding stays padding);
an odd length gets one padded slot. The pool-query-only layer is the model's cross-attention
sublayer (layout ``"c f"``: queries from the pooled sequence, keys and values from the block's
input, which enters un-normalised as in the paper's post-LN layers). Positions must be an
``input`` encoding (added to the embeddings): the pooled blocks have no per-token positions for
rotary or bias encodings. Simplifications: the paper's relative attention, its separate [CLS]
token and the truncated-sequence option are not implemented.

Complexity: block m runs on n / 2^{m−1} tokens: Σ_m L_m·O((n/2^{m−1})² d) attention plus the
decoder's O(L_dec n² d); bidirectional only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig, layer_specs
from ..errors import ConfigError
from ..nn.context import MixerContext
from ..registry import MODELS
from .block import Block
from .encoder import Encoder


def _check(cfg: ModelConfig) -> tuple[list[int], int]:
    ex = dict(cfg.extra or {})
    unknown = sorted(set(ex) - {"blocks", "decoder_layers", "mlm_activation"})
    if unknown:
        raise ConfigError(f"model.extra.{unknown[0]}", ex[unknown[0]],
                          ["blocks", "decoder_layers", "mlm_activation"],
                          why="not an option of arch 'funnel'")
    blocks = ex.get("blocks", [2, 2, 2])
    if not isinstance(blocks, (list, tuple)) or not blocks or not all(
            isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in blocks):
        raise ConfigError("model.extra.blocks", blocks,
                          why="a list of layer counts, each an integer >= 1")
    dec = ex.get("decoder_layers", 2)
    if isinstance(dec, bool) or not isinstance(dec, int) or dec < 0:
        raise ConfigError("model.extra.decoder_layers", dec, why="an integer >= 0")
    if cfg.n_layers != sum(blocks) + dec:
        raise ConfigError("model.n_layers", cfg.n_layers,
                          why=f"must equal sum(extra.blocks) + extra.decoder_layers = "
                              f"{sum(blocks) + dec}")
    return list(blocks), dec


def pool_mask(mask: Tensor | None, B: int, n: int, device) -> Tensor:
    """(B, n) → (B, ceil(n/2)): a pooled slot is real if one of its two tokens is."""
    m = torch.ones(B, n, dtype=torch.bool, device=device) if mask is None else mask
    m = F.pad(m, (0, n % 2), value=False)
    return m.view(B, -1, 2).any(-1)


def mean_pool(h: Tensor, mask: Tensor | None) -> Tensor:
    """Stride-2 mean over the real tokens of each window: (B, n, d) → (B, ceil(n/2), d)."""
    B, n, d = h.shape
    w = torch.ones(B, n, device=h.device, dtype=h.dtype) if mask is None else mask.to(h.dtype)
    h, w = F.pad(h * w[..., None], (0, 0, 0, n % 2)), F.pad(w, (0, n % 2))
    s = h.view(B, -1, 2, d).sum(2)
    c = w.view(B, -1, 2).sum(2).clamp_min(1.0)
    return s / c[..., None]


class FunnelStack(nn.Module):
    """The funnel's blocks and decoder with the BlockStack interface: (B, n, d) → (B, n, d)."""

    def __init__(self, cfg: ModelConfig, causal: bool):
        super().__init__()
        if causal:
            raise ConfigError("model.causal", True, why="funnel pools across positions in both "
                              "directions: an encoder only (model.causal=false)")
        self.sizes, dec = _check(cfg)
        specs = layer_specs(cfg, cfg.n_layers)
        i, self.layers = 0, nn.ModuleList()
        for m, size in enumerate(self.sizes):
            for j in range(size):
                layout = "c f" if (m > 0 and j == 0) else None      # pool-query-only layer
                self.layers.append(Block(specs[i], cfg, i, cfg.n_layers, False, layout))
                i += 1
        self.decoder = nn.ModuleList(Block(specs[i + j], cfg, i + j, cfg.n_layers, False)
                                     for j in range(dec))

    @property
    def final_norm(self) -> bool:
        last = self.decoder[-1] if len(self.decoder) else self.layers[-1]
        return last.final_norm

    def __len__(self):
        return len(self.layers) + len(self.decoder)

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        B, n, _ = x.shape
        mask, k, h, first = ctx.key_padding_mask, 0, x, None
        ctx_m = ctx
        lengths = []
        for m, size in enumerate(self.sizes):
            for j in range(size):
                blk = self.layers[k]
                ctx_m.layer, ctx_m.n_layers = k, len(self)
                if m > 0 and j == 0:                  # pool the queries, attend to all of h
                    pm = pool_mask(mask, B, h.shape[1], h.device)
                    q = mean_pool(h, mask)
                    pos = torch.arange(q.shape[1], device=q.device).expand(B, -1)
                    ctx_m = ctx.replace(key_padding_mask=pm, context=h, context_mask=mask,
                                        positions=pos)
                    h, _ = blk(q, ctx_m)
                    mask = pm
                else:
                    h, _ = blk(h, ctx_m)
                k += 1
            lengths.append(h.shape[1])
            if m == 0:
                first = h
        self.last_lengths = lengths                  # per block, for inspection and tests
        if len(self.decoder):
            g = h.repeat_interleave(2 ** (len(self.sizes) - 1), dim=1)[:, :n] + first
            for j, blk in enumerate(self.decoder):
                ctx.layer, ctx.n_layers = len(self.layers) + j, len(self)
                g, _ = blk(g, ctx)
            return g, None
        return h.repeat_interleave(2 ** (len(self.sizes) - 1), dim=1)[:, :n], None


@MODELS.register(
    "funnel", paper="Funnel-Transformer: Filtering out Sequential Redundancy for Efficient "
                    "Language Processing (Dai et al., 2020)",
    equation="§2.2: h' = Pool(h); h = LN(h' + Attn(Q=h', KV=h)); §2.3: g = Up(h_M) + h_1",
    complexity=("Σ_m L_m·O((n/2^{m-1})² d) + L_dec·O(n² d)", "O(n d) per layer"),
    test="tests/papers/test_models_funnel.py::"
         "test_blocks_halve_the_sequence_with_pool_query_only_attention",
    tiny={"mixer": {"name": "softmax", "heads": 2}, "position": "learned",
          "residual": "post_ln", "extra": {"blocks": [1, 1], "decoder_layers": 0}})
class Funnel(Encoder):
    """Encoder whose blocks pool the sequence by 2, with an upsampling decoder; BERT's heads."""

    def build_blocks(self, cfg: ModelConfig) -> nn.Module:
        pos = self.pos
        if set(pos.hooks) - {"input"}:
            raise ConfigError("model.position", cfg.position,
                              why="funnel needs an 'input' position encoding (learned, "
                                  "sinusoidal): its pooled blocks have no per-token positions")
        return FunnelStack(cfg, self.causal)
