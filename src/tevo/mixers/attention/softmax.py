"""Multi-head scaled dot-product attention.

Paper: Attention Is All You Need (Vaswani et al., 2017), §3.2, eq. 1:
    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V,   MultiHead = Concat(head_1..h) W^O.
Complexity: time O(n^2 d), memory O(n^2) eager / O(n) with the fused kernel; decode O(n d) per
token with a KV cache of 2·n·h_kv·e numbers.

``kv_heads`` < ``heads`` gives grouped-query attention (kv_heads = 1: multi-query); the MQA/GQA
registry entries are thin subclasses. ``impl`` picks the kernel: "sdpa" (fused, default) or
"eager" (the readable reference in ``tevo.nn.attention``).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.attention import ATTENTION_FUNCTIONS, eager_attention
from ...nn.context import MixerContext
from ...nn.masks import attention_mask
from ...registry import MIXERS
from ..base import Mixer, Supports


class MultiHeadAttentionBase(Mixer):
    """Projections, position hooks, masks and KV cache shared by softmax-score attentions.

    Subclasses that change only how scores become outputs override ``attend``. Every path of
    ``forward`` (the fused causal shortcut is taken only when ``attend`` is not overridden)
    goes through it, except the value term of an encoding with the ``value`` hook (Shaw eq. 3),
    which needs the attention weights that ``attend`` does not return: a subclass that
    overrides ``attend`` loses ``value`` from its ``supports.positions`` (so the combination is
    a one-line config error) unless it also overrides ``_attend_with_values``.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        base = MultiHeadAttentionBase
        if (cls.attend is not base.attend and cls._attend_with_values is
                base._attend_with_values and "value" in cls.supports.positions):
            cls.supports = dataclasses.replace(
                cls.supports, positions=cls.supports.positions - {"value"})

    supports = Supports(causal=True, bidirectional=True, cross=True, cache=True,
                        positions=frozenset({"input", "qk", "bias"}))

    def __init__(self, d_model: int, heads: int = 4, kv_heads: int | None = None,
                 head_dim: int | None = None, bias: bool = True, dropout: float = 0.0,
                 impl: str = "sdpa", cross: bool = False, scale: float | None = None,
                 out_bias: bool | None = None):
        super().__init__()
        kv_heads = heads if kv_heads is None else kv_heads
        if head_dim is None:
            if d_model % heads:
                raise ConfigError("mixer.heads", heads,
                                  why=f"d_model={d_model} is not divisible by heads={heads}")
            head_dim = d_model // heads
        if heads % kv_heads:
            raise ConfigError("mixer.kv_heads", kv_heads,
                              why=f"heads={heads} is not divisible by kv_heads={kv_heads}")
        if impl not in ATTENTION_FUNCTIONS:
            raise ConfigError("mixer.impl", impl, ATTENTION_FUNCTIONS)
        self.d_model, self.heads, self.kv_heads, self.head_dim = d_model, heads, kv_heads, head_dim
        self.impl, self.dropout, self.cross, self.scale = impl, dropout, cross, scale
        self.q_proj = nn.Linear(d_model, heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(d_model, kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(heads * head_dim, d_model, bias=bias if out_bias is None else out_bias)

    @property
    def takes_attn_mask(self) -> bool:
        """Honours ``ctx.attn_mask``: true for the base forward and attend (a subclass that
        replaces either must declare it itself)."""
        t = type(self)
        return t.forward is MultiHeadAttentionBase.forward \
            and t.attend is MultiHeadAttentionBase.attend

    # -- shapes ---------------------------------------------------------------------------
    def _split(self, t: Tensor, h: int) -> Tensor:
        B, n, _ = t.shape
        return t.view(B, n, h, self.head_dim).transpose(1, 2)   # (B, h, n, e)

    def _merge(self, t: Tensor) -> Tensor:
        B, h, n, e = t.shape
        return t.transpose(1, 2).reshape(B, n, h * e)           # (B, n, h·e)

    def init_state(self, batch: int, device=None, dtype=None):
        return {}

    # -- forward --------------------------------------------------------------------------
    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        B, n, _ = x.shape
        q = self._split(self.q_proj(x), self.heads)
        q_pos = ctx.query_positions(x)
        if self.cross:
            return self._cross(x, q, ctx, state)
        k = self._split(self.k_proj(x), self.kv_heads)
        v = self._split(self.v_proj(x), self.kv_heads)
        k_pos = q_pos
        pos = ctx.pos
        rotate = pos is not None and "qk" in pos.hooks
        # xPos (and any encoding that asks) encodes all keys at each call, centred on the call's
        # queries, so the cache holds raw keys (as torchscale does); only where the scores are
        # plain dot products (``attend`` not overridden), in which the centre cancels
        per_call = (rotate and getattr(pos, "encodes_keys_per_call", False)
                    and type(self).attend is MultiHeadAttentionBase.attend)
        if rotate and not per_call:
            q, k = pos.rotate(q, k, q_pos, k_pos)
        if state is not None and "k" in state:                   # append to the KV cache
            k = torch.cat([state["k"], k], 2)
            v = torch.cat([state["v"], v], 2)
            k_pos = torch.cat([state["pos"], k_pos], 1)
        new_state = None if state is None else {"k": k, "v": v, "pos": k_pos}
        if per_call:
            q, k = pos.rotate_call(q, k, q_pos, k_pos)
        n_k = k.shape[2]
        kpm = ctx.key_padding_mask
        if kpm is not None and kpm.shape[1] != n_k:
            raise ValueError(f"key_padding_mask covers {kpm.shape[1]} keys, attention has {n_k}")
        bias = None
        if pos is not None and "bias" in pos.hooks:
            bias = pos.bias(q, k, q_pos, k_pos)
        value_hook = pos is not None and "value" in pos.hooks
        if (self.impl == "sdpa" and ctx.causal and kpm is None and bias is None and n == n_k
                and not value_hook and ctx.attn_mask is None and type(self).attend is MultiHeadAttentionBase.attend):
            # the commonest training call: plain causal attention, no n × n mask to build
            p = self.dropout if self.training else 0.0
            y = ATTENTION_FUNCTIONS["sdpa"](q, self.repeat_kv(k), self.repeat_kv(v),
                                            scale=self.scale, dropout=p, is_causal=True)
            return self.o_proj(self._merge(y)), new_state
        mask = attention_mask(n, n_k, ctx.causal, kpm, x.device)
        if ctx.attn_mask is not None:                              # (B|1, n, n_k) pattern
            am = ctx.attn_mask[:, None].bool()
            mask = am if mask is None else mask & am
        if value_hook and "value" not in self.supports.positions:
            raise ConfigError("position", type(pos).__name__,
                              why=f"its value hook needs the attention weights, which "
                                  f"{type(self).__name__}.attend does not return (override "
                                  f"_attend_with_values too)")
        if value_hook:
            y = self._attend_with_values(q, k, v, mask, bias, pos, q_pos, k_pos)
        else:
            y = self.attend(q, k, v, mask, bias, ctx)
        return self.o_proj(self._merge(y)), new_state

    def _attend_with_values(self, q, k, v, mask, bias, pos, q_pos, k_pos) -> Tensor:
        """Eager path for encodings with a value term (Shaw eq. 3): z_i = Σ_j α_ij (v_j + a_ij)."""
        p = self.dropout if self.training else 0.0
        y, w = eager_attention(q, self.repeat_kv(k), self.repeat_kv(v), mask, bias, self.scale,
                               p, return_weights=True)
        return y + pos.values(w, q_pos, k_pos).to(y.dtype)

    def _cross(self, x, q, ctx: MixerContext, state):
        if state is not None and "k" in state:
            k, v = state["k"], state["v"]
        else:
            if ctx.context is None:
                raise ValueError("cross-attention needs ctx.context (the encoder output)")
            k = self._split(self.k_proj(ctx.context), self.kv_heads)
            v = self._split(self.v_proj(ctx.context), self.kv_heads)
        new_state = None if state is None else {"k": k, "v": v}
        mask = attention_mask(q.shape[2], k.shape[2], False, ctx.context_mask, x.device)
        y = self.attend(q, k, v, mask, None, ctx)
        return self.o_proj(self._merge(y)), new_state

    def repeat_kv(self, t: Tensor) -> Tensor:
        """(B, h_kv, n, e) → (B, h, n, e): each K/V head serves heads/kv_heads query heads."""
        r = self.heads // self.kv_heads
        return t if r == 1 else t.repeat_interleave(r, dim=1)

    def attend(self, q, k, v, mask, bias, ctx: MixerContext) -> Tensor:
        k, v = self.repeat_kv(k), self.repeat_kv(v)
        fn = ATTENTION_FUNCTIONS[self.impl]
        p = self.dropout if self.training else 0.0
        return fn(q, k, v, mask=mask, bias=bias, scale=self.scale, dropout=p)


@MIXERS.register(
    "softmax", paper="Attention Is All You Need (Vaswani et al., 2017)",
    equation="§3.2.2 eq. 1: MultiHead(Q,K,V) = Concat(softmax(QW_i^Q (KW_i^K)^T/√d_k) VW_i^V) W^O",
    complexity=("O(n² d)", "O(n²) eager, O(n) fused"),
    test="tests/papers/test_softmax.py::test_softmax_equals_torch_multihead_attention",
    tiny={"heads": 2})
class SoftmaxAttention(MultiHeadAttentionBase):
    """Scaled dot-product multi-head attention (self or cross), KV cache, fused or eager."""

    supports = Supports(causal=True, bidirectional=True, cross=True, cache=True,
                        positions=frozenset({"input", "qk", "bias", "value"}),
                        flat_grid=True)           # order-free: ViT's flattened patch grid
