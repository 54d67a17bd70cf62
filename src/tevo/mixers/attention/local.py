"""Local attention: sliding-window and blocked, causal and bidirectional, with a rolling cache.

Papers: Simple Local Attentions Remain Competitive for Long-Context Tasks (Xiong et al., 2022);
Image Transformer (Parmar et al., 2018), §3.2 "1D local attention" (query blocks attending to a
memory block around them); Longformer (Beltagy et al., 2020), §3.1 sliding window; Mistral 7B
(2023) sliding-window attention with a rolling buffer cache.

    sliding: token i attends j iff 0 ≤ i − j < w (causal) or |i − j| < w (bidirectional);
    blocked: with blocks b(i) = ⌊i / w⌋, token i attends j iff
             b(i) − look_backward ≤ b(j) ≤ b(i) + look_forward (and j ≤ i when causal).
Positions are the context's absolute positions, so padding never shifts a window or a block.
Complexity: time O(n·w·d), memory O(n·w) (blocks of w queries against their 2–3 key blocks;
``tevo.nn.blocksparse``); a decode step costs O(w·d) and the cache holds the last
w − 1 (sliding) or (look_backward + 1)·w − 1 (blocked) keys, whatever the length generated.
``impl`` ("sdpa" | "eager") picks the kernel when every key lies in the window (n + cache ≤ w);
``out_bias`` gives the output projection its own bias setting (Qwen2: biased q/k/v, unbiased o).
"""
from __future__ import annotations

from torch import Tensor

from ...errors import ConfigError
from ...nn.attention import ATTENTION_FUNCTIONS
from ...nn.blocksparse import band_tables, index_offset, merge_partials, tile_attention
from ...nn.context import MixerContext
from ...registry import MIXERS
from .pattern import PatternAttention

PATTERNS = ("sliding", "blocked")


@MIXERS.register(
    "local",
    paper="Simple Local Attentions Remain Competitive for Long-Context Tasks (Xiong et al., "
          "2022); Image Transformer 1D local (Parmar et al., 2018); Longformer sliding window "
          "(Beltagy et al., 2020)",
    equation="softmax over j ∈ W(i): sliding W(i) = {j : 0 ≤ i−j < w} (causal) or {|i−j| < w}; "
             "blocked W(i) = {j : ⌊i/w⌋−L ≤ ⌊j/w⌋ ≤ ⌊i/w⌋+R}",
    complexity=("O(n w d)", "O(n w)"),
    test="tests/papers/test_attention_local.py::test_window_at_least_n_equals_softmax",
    tiny={"heads": 2, "window": 4})
class LocalAttention(PatternAttention):
    """Sliding-window or blocked local attention; O(n·w) memory, rolling-buffer KV cache."""

    def __init__(self, d_model: int, heads: int = 4, window: int = 128,
                 pattern: str = "sliding", look_backward: int = 1,
                 look_forward: int | None = None, kv_heads: int | None = None,
                 head_dim: int | None = None, bias: bool = True, dropout: float = 0.0,
                 scale: float | None = None, causal: bool = True,
                 out_bias: bool | None = None, impl: str = "sdpa"):
        super().__init__(d_model, heads, kv_heads, head_dim, bias, dropout, scale, causal,
                         out_bias)
        if impl not in ATTENTION_FUNCTIONS:
            raise ConfigError("mixer.impl", impl, ATTENTION_FUNCTIONS)
        self.impl = impl            # the kernel of the all-keys-in-window case
        if pattern not in PATTERNS:
            raise ConfigError("mixer.pattern", pattern, PATTERNS)
        if int(window) < 1:
            raise ConfigError("mixer.window", window, why="window must be a positive integer")
        if look_forward is None:
            look_forward = 0 if causal else 1
        if look_backward < 0 or look_forward < 0:
            raise ConfigError("mixer.look_backward", (look_backward, look_forward),
                              why="look_backward and look_forward must be >= 0")
        self.window, self.pattern = int(window), pattern
        self.look_backward, self.look_forward = int(look_backward), int(look_forward)

    def cache_span(self) -> int:
        w = self.window
        return w - 1 if self.pattern == "sliding" else (self.look_backward + 1) * w - 1

    def allowed(self, qp: Tensor, kp: Tensor, causal: bool) -> Tensor:
        """The pattern as a predicate on absolute positions (used by the tiles and the tests)."""
        w = self.window
        if self.pattern == "sliding":
            d = qp - kp
            return ((d >= 0) & (d < w)) if causal else (d.abs() < w)
        qb, kb = qp.div(w, rounding_mode="floor"), kp.div(w, rounding_mode="floor")
        ok = (kb >= qb - self.look_backward) & (kb <= qb + self.look_forward)
        return ok & (kp <= qp) if causal else ok

    def attend_pattern(self, q, k, v, q_pos, k_pos, k_valid, key_offset, ctx: MixerContext):
        n, m, w = q.shape[2], k.shape[2], self.window
        causal = ctx.causal
        if self.pattern == "sliding" and m <= w:
            # every real pair is within the window (positions are contiguous): the pattern is
            # plain attention over the real keys, and the fused kernel beats tiles at this size
            mask = k_valid[:, None, None, :]                                   # (B, 1, 1, m)
            if causal:
                mask = mask & (k_pos[:, None, None, :] <= q_pos[:, None, :, None])
            pos = ctx.pos
            bias = (pos.bias(q, k, q_pos, k_pos) if pos is not None and "bias" in pos.hooks
                    else None)
            return ATTENTION_FUNCTIONS[self.impl](q, k, v, mask, bias, self.scale,
                                                  self.attn_dropout)
        if self.pattern == "sliding":
            # blocks of w queries see the w−1 keys before them (and after, bidirectionally)
            q_idx, k_idx = band_tables(n, m, key_offset, min(w, n), w - 1,
                                       0 if causal else w - 1, device=q.device)
        else:
            # blocks aligned to absolute positions ≡ 0 (mod w), per sample
            shift = index_offset(q_pos, ctx.query_mask(n), 0) % w
            fwd = 0 if causal else self.look_forward * w
            q_idx, k_idx = band_tables(n, m, key_offset, w, self.look_backward * w, fwd,
                                       shift=shift, device=q.device)
        part = tile_attention(q, k, v, q_idx, k_idx, q_pos, k_pos, k_valid,
                              allow=lambda qp, kp: self.allowed(qp, kp, causal),
                              bias=self.bias_fn(ctx), scale=self.scale, dropout=self.attn_dropout)
        return merge_partials([part], q.dtype)
