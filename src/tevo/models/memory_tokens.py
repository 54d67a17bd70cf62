"""Memory Transformer: trainable [mem] tokens prepended to the input of a bidirectional encoder,
with the MemCtrl and MemBottleneck variants; and GMAT, global memory tokens beside a sparse
(local-band) attention between sequence tokens (Gupta & Berant, 2020, §3).

Paper: Memory Transformer (Burtsev, Kuratov, Peganov & Sapunov, 2020), §2:
    MemTransformer:  X^0 = [mem ∘ E(x)];  X^l = Layer_l(X^l−1)   (full attention over both)
    MemCtrl:         memory rows updated by a dedicated memory controller with its own weights,
                     M^l = Ctrl_l([M^l−1 ∘ S^l−1])[mem],  S^l = Layer_l([M^l−1 ∘ S^l−1])[seq]
    MemBottleneck:   full attention between sequence tokens removed: first the memory is
                     updated, M^l = Layer_l([M^l−1 ∘ S^l−1])[mem]; then the sequence attends to
                     the updated memory only, S^l = Layer_l([M^l ∘ S^l−1] | seq → mem)[seq]
The k memory tokens are learned embeddings (no position: they are a set, given position 0 for
encodings applied inside attention); the heads read the sequence rows. ``model.extra``:
mem_tokens (k ≥ 1, default 10), mem_variant (memtr | memctrl | membottleneck).

It is an encoder (the paper's setting: the encoder of a translation model, BERT on GLUE):
prepended tokens in a causal model would read nothing, so a causal model is refused; a
decoder's memory across segments is ``rmt``.

Complexity: the encoder's cost on n + k tokens per layer (MemBottleneck: two block passes per
layer, the second with sequence rows attending to k keys only: O(n k d)); MemCtrl doubles the
layer parameters.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import ConfigError
from ..registry import MODELS
from .block import BlockStack
from .encoder import Encoder

VARIANTS = ("memtr", "memctrl", "membottleneck")


class MemoryTokenStack(nn.Module):
    """The encoder's block stack with k memory rows in front (see the module docstring)."""

    def __init__(self, cfg: ModelConfig, causal: bool, k: int, variant: str,
                 window: int | None = None):
        super().__init__()
        self.k, self.variant, self.window = k, variant, window
        self.stack = BlockStack(cfg, causal)
        self.blocks = self.stack.blocks
        self.ctrl = BlockStack(cfg, causal).blocks if variant == "memctrl" else None
        self.mem = nn.Parameter(torch.randn(k, cfg.d_model) * cfg.init_std)
        if variant in ("membottleneck", "gmat"):
            for blk in self.blocks:
                mixer = blk.sublayers[blk.layout.index("a")] if "a" in blk.layout else None
                takes = getattr(mixer, "takes_attn_mask", False)
                if callable(takes):
                    takes = takes()
                if not takes:
                    raise ConfigError("model.mixer", getattr(mixer, "registry_name", "?"),
                                      why=f"{variant} restricts who attends to whom; this "
                                          f"mixer does not take an attention pattern")

    @property
    def final_norm(self) -> bool:
        return self.stack.final_norm

    def __len__(self):
        return len(self.blocks)

    def forward(self, x: Tensor, ctx, state=None):
        """x (B, n, d) -> (B, n, d): the sequence rows after the layers."""
        B, n, _ = x.shape
        k, dev = self.k, x.device
        ones = torch.ones(B, k, dtype=torch.bool, device=dev)
        kpm = None if ctx.key_padding_mask is None else torch.cat(
            [ones, ctx.key_padding_mask.bool()], 1)
        positions = torch.cat([torch.zeros(B, k, dtype=torch.long, device=dev),
                               ctx.query_positions(x)], 1)
        am = ctx.attn_mask
        if am is not None:                                   # extend an extra pattern
            full = torch.ones(am.shape[0], k + n, k + n, dtype=torch.bool, device=dev)
            full[:, k:, k:] = am.bool()
            am = full
        c = ctx.replace(key_padding_mask=kpm, positions=positions, attn_mask=am)
        bottleneck = None
        if self.variant == "membottleneck":                  # sequence rows see memory only
            bottleneck = torch.zeros(1, k + n, k + n, dtype=torch.bool, device=dev)
            bottleneck[:, :, :k] = True
            bottleneck[:, :k, :] = True
            if am is not None:
                bottleneck = bottleneck & am
        if self.variant == "gmat":                           # memory ↔ all, sequence: band
            idx = torch.arange(n, device=dev)
            band = torch.ones(1, k + n, k + n, dtype=torch.bool, device=dev)
            band[:, k:, k:] = (idx[:, None] - idx[None, :]).abs() <= self.window
            c = c.replace(attn_mask=band if am is None else band & am)
        h = torch.cat([self.mem.to(x.dtype).expand(B, -1, -1), x], 1)   # (B, k + n, d)
        for i, blk in enumerate(self.blocks):
            c.layer, c.n_layers = i, len(self.blocks)
            if self.variant in ("memtr", "gmat"):
                h, _ = blk(h, c)
            elif self.variant == "memctrl":
                m, _ = self.ctrl[i](h, c)                    # the memory controller
                s, _ = blk(h, c)
                h = torch.cat([m[:, :k], s[:, k:]], 1)
            else:
                m, _ = blk(h, c)                             # 1. memory reads [mem ∘ seq]
                h2 = torch.cat([m[:, :k], h[:, k:]], 1)
                s, _ = blk(h2, c.replace(attn_mask=bottleneck))   # 2. seq reads memory only
                h = torch.cat([m[:, :k], s[:, k:]], 1)
        return h[:, k:], None


@MODELS.register(
    "memory_tokens", paper="Memory Transformer (Burtsev et al., 2020)",
    equation="§2: X^0 = [mem ∘ E(x)]; MemCtrl: memory rows by a controller with own weights; "
             "MemBottleneck: memory reads [mem ∘ seq], then seq reads the updated memory only",
    complexity=("L·(mixer on n + k tokens) (MemBottleneck: 2 passes per layer)",
                "k·d memory parameters"),
    test="tests/papers/test_models_memory_tokens.py::"
         "test_variants_are_the_papers_layer_equations",
    tiny={"mixer": {"name": "softmax", "heads": 2},
          "extra": {"mem_tokens": 3, "mem_variant": "membottleneck"}})
class MemoryTransformer(Encoder):
    """A bidirectional encoder with k trainable [mem] tokens prepended (MemTransformer,
    MemCtrl, MemBottleneck)."""

    def build_blocks(self, cfg: ModelConfig) -> nn.Module:
        ex = cfg.extra or {}
        k, variant = ex.get("mem_tokens", 10), ex.get("mem_variant", "memtr")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError("model.extra.mem_tokens", k, why="an integer >= 1")
        if variant not in VARIANTS:
            raise ConfigError("model.extra.mem_variant", variant, list(VARIANTS))
        if self.causal:
            raise ConfigError("model.causal", True, [False],
                              why="memory tokens prepended to a causal model read nothing; "
                                  "use memory 'rmt' for a decoder")
        return MemoryTokenStack(cfg, self.causal, k, variant)


@MODELS.register(
    "gmat", paper="GMAT: Global Memory Augmentation for Transformers (Gupta & Berant, 2020)",
    equation="§3: [mem ∘ x]; memory attends to all and all attend to memory; sequence tokens "
             "attend to each other through a sparse (local band |i − j| ≤ w) pattern",
    complexity=("O(n·(w + k)·d) attention with a banded kernel (here a mask over dense "
                "O((n + k)²) scores)", "k·d memory parameters"),
    test="tests/papers/test_models_memory_tokens.py::"
         "test_gmat_is_global_memory_beside_a_local_band",
    tiny={"mixer": {"name": "softmax", "heads": 2},
          "extra": {"mem_tokens": 2, "window": 2}})
class GlobalMemoryTransformer(Encoder):
    """An encoder whose k global memory tokens attend to and are attended by every token, beside
    sparse (local-band) attention between sequence tokens (GMAT)."""

    def build_blocks(self, cfg: ModelConfig) -> nn.Module:
        ex = cfg.extra or {}
        k, w = ex.get("mem_tokens", 8), ex.get("window", 8)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError("model.extra.mem_tokens", k, why="an integer >= 1")
        if isinstance(w, bool) or not isinstance(w, int) or w < 0:
            raise ConfigError("model.extra.window", w, why="an integer >= 0")
        if self.causal:
            raise ConfigError("model.causal", True, [False],
                              why="GMAT's global memory attends to every token; a causal "
                                  "model cannot carry it")
        return MemoryTokenStack(cfg, self.causal, k, "gmat", window=w)
