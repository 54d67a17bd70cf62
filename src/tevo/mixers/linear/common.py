"""Pieces shared by the kernel-attention mixers: projections, position hooks, padding, the
normalisations and the recurrent state around ``tevo.nn.chunked.linear_attention``.

    y_i = φ(q_i)ᵀ Σ_{j≤i} φ(k_j) v_jᵀ / φ(q_i)ᵀ Σ_{j≤i} φ(k_j)            (normalize="sum")
    y_i = φ(q_i)ᵀ Σ_{j≤i} φ(k_j) v_jᵀ / n_i    (n_i real keys seen;       normalize="count")
    y_i = φ(q_i)ᵀ Σ_{j≤i} φ(k_j) v_jᵀ                                     (normalize="none")

Position hooks: ``qk`` rotates q, k before φ (RoPE-style); ``feature`` transforms φ(q), φ(k)
after it (PermuteFormer, SPE), with the absolute positions of ``ctx.positions``. Padded keys get
φ(k) = 0 and v = 0, so they add nothing to the state. The state is {"S": (B, h, m, d_v), "z":
(B, h, m)} (or "count" (B,)), in fp32, and does not grow with n; kernels run in fp32 with
autocast off.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.chunked import (FORMS, check_form, fp32_region, linear_attention, safe_denominator,
                           upcast)
from ...nn.context import MixerContext
from ..base import Mixer, Supports
from .feature_maps import build_feature_map

NORMALIZE = ("sum", "count", "none")
KERNEL_POSITIONS = frozenset({"input", "qk", "feature"})


def head_dims(d_model: int, heads: int, head_dim: int | None) -> int:
    if int(heads) < 1:
        raise ConfigError("mixer.heads", heads, why="must be >= 1")
    if head_dim is None:
        if d_model % heads:
            raise ConfigError("mixer.heads", heads,
                              why=f"d_model={d_model} is not divisible by heads={heads}")
        head_dim = d_model // heads
    return int(head_dim)


def split_heads(t: Tensor, h: int) -> Tensor:
    B, n, _ = t.shape
    return t.view(B, n, h, -1).transpose(1, 2)                 # (B, h, n, e)


def merge_heads(t: Tensor) -> Tensor:
    B, h, n, e = t.shape
    return t.transpose(1, 2).reshape(B, n, h * e)              # (B, n, h·e)


def qkvo(d_model: int, inner: int, bias: bool) -> tuple[nn.Linear, nn.Linear, nn.Linear,
                                                          nn.Linear]:
    """Query, key, value (d_model → inner) and output (inner → d_model) projections, made in
    that order."""
    return (nn.Linear(d_model, inner, bias=bias), nn.Linear(d_model, inner, bias=bias),
            nn.Linear(d_model, inner, bias=bias), nn.Linear(inner, d_model, bias=bias))


def project_qkv(mixer: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(B, h, n, e) queries, keys, values from ``mixer``'s ``q_proj``, ``k_proj``, ``v_proj``."""
    h = mixer.heads
    q, k, v = (split_heads(p(x), h) for p in (mixer.q_proj, mixer.k_proj, mixer.v_proj))
    return q, k, v


def rotate_qk(q: Tensor, k: Tensor, x: Tensor, ctx: MixerContext):
    """q, k rotated by a ``qk`` position hook (unchanged without one), and the (B, n) query
    positions of x."""
    pos = ctx.query_positions(x)
    if ctx.pos is not None and "qk" in ctx.pos.hooks:
        q, k = ctx.pos.rotate(q, k, pos, pos)
    return q, k, pos


def key_mask(mask: Tensor | None, like: Tensor) -> Tensor | None:
    """(B, n) real-token mask → (B, 1, n, 1) in ``like``'s dtype."""
    return None if mask is None else mask[:, None, :, None].to(like.dtype)


def real_counts(mask: Tensor | None, B: int, n: int, causal: bool, before: Tensor | None,
                device) -> Tensor:
    """(B, n) number of real keys visible to each query (itself included when real), counting
    ``before`` (B,) earlier real tokens; bidirectional: all real tokens of the row."""
    m = torch.ones(B, n, device=device) if mask is None else mask.float()
    c = m.cumsum(-1) if causal else m.sum(-1, keepdim=True).expand(B, n)
    return c if before is None else c + before[:, None].float()



def feature_hook_before(pos, q: Tensor, k: Tensor, q_pos: Tensor):
    """The ``feature`` hook of an encoding that acts on the raw queries and keys (it sets
    ``before_feature_map``, e.g. SPE as in its paper): applied here, before the mixer's feature
    map. Returns (q, k, whether the hook is still to be applied to the mapped features)."""
    if pos is None or "feature" not in pos.hooks:
        return q, k, False
    if getattr(pos, "before_feature_map", False):
        q, k = pos.features(q, k, q_pos, q_pos)
        return q, k, False
    return q, k, True


def position_state_decay(ctx: MixerContext, heads: int, mixer: str, supported: bool = True):
    """log decay per head (h,) that a ``feature`` encoding asks the causal state to apply
    (PermuteFormer's r_h), or None; a one-line error where it cannot be honoured."""
    pos = ctx.pos
    fn = getattr(pos, "state_log_decay", None) if pos is not None and "feature" in pos.hooks \
        else None
    d = fn(heads) if fn is not None else None
    if d is not None and (not supported or not ctx.causal):
        why = (f"{mixer} has no decaying attention state" if not supported else
               f"{mixer} is bidirectional here and the decay acts on the causal state")
        raise ConfigError("position.decay", True, why=f"the per-head decay: {why}; set "
                                                      f"position.decay=false")
    return d

class KernelAttention(Mixer):
    """Multi-head kernel attention φ(Q)(φ(K)ᵀV) with a pluggable feature map and three forms."""

    # attend applies ``log_decay`` to its state (a position encoding's per-head decay rides on it)
    takes_state_decay = True

    supports = Supports(causal=True, bidirectional=True, cross=False, cache=True,
                        positions=KERNEL_POSITIONS)

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None,
                 feature_map="elu+1", form: str = "chunk", chunk: int = 64,
                 normalize: str = "sum", eps: float = 1e-6, bias: bool = False,
                 max_len: int = 4096, scale: float = 1.0):
        super().__init__()
        self.heads = int(heads)
        self.head_dim = head_dims(d_model, heads, head_dim)
        self.form = check_form(form, FORMS)
        if int(chunk) < 1:
            raise ConfigError("mixer.chunk", chunk, why="must be >= 1")
        if normalize not in NORMALIZE:
            raise ConfigError("mixer.normalize", normalize, NORMALIZE)
        self.chunk, self.normalize, self.eps, self.scale = int(chunk), normalize, eps, scale
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = qkvo(
            d_model, self.heads * self.head_dim, bias)
        self.fmap = build_feature_map(feature_map, self.head_dim, self.heads, max_len)

    def denominator(self, den: Tensor) -> Tensor:
        """The normaliser φ(q)ᵀz, guarded against zero (sign kept)."""
        return safe_denominator(den, self.eps)

    def init_state(self, batch: int, device=None, dtype=None) -> dict:
        return {}                               # filled on first use: S, z in fp32

    # -- hooks for subclasses ------------------------------------------------------------------
    def qkv(self, x: Tensor, ctx: MixerContext):
        """(B, h, n, e) queries, keys, values before the feature map."""
        return project_qkv(self, x)

    def gates(self, x: Tensor, ctx: MixerContext):
        """(log_decay (B, h, n) or None, key weight (B, h, n) or None): RFA's gate."""
        return None, None

    def features(self, q: Tensor, k: Tensor, ctx: MixerContext, q_pos: Tensor):
        q, k, after = feature_hook_before(ctx.pos, q, k, q_pos)
        fq = self.fmap(q, q_pos, is_query=True)
        fk = self.fmap(k, q_pos, is_query=False)
        if after:
            fq, fk = ctx.pos.features(fq, fk, q_pos, q_pos)
        return fq * self.scale if self.scale != 1.0 else fq, fk

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        B, n, _ = x.shape
        if self.training:
            self.fmap.maybe_redraw()
        q, k, v = self.qkv(x, ctx)
        q, k, q_pos = rotate_qk(q, k, x, ctx)
        out_dtype = v.dtype
        mask = ctx.query_mask(n)
        log_decay, k_weight = self.gates(x, ctx)            # in the model's dtype, then fp32
        pos_decay = position_state_decay(ctx, self.heads, type(self).__name__,
                                         self.takes_state_decay)
        if pos_decay is not None:                           # PermuteFormer's r_h^{i-j}
            pd = pos_decay.to(x.device)[None, :, None].expand(B, -1, n)
            log_decay = pd if log_decay is None else upcast(log_decay) + pd
        with fp32_region(x.device.type):
            fq, fk = self.features(upcast(q), upcast(k), ctx, q_pos)
            y, new_state = self.attend(fq, fk, upcast(v), mask, ctx.causal, state, log_decay,
                                       k_weight)
        return self.o_proj(merge_heads(y.to(out_dtype))), new_state

    def pick_form(self, n: int, state) -> str:
        return "recurrent" if (state is not None and n == 1) else self.form

    def attend(self, fq, fk, v, mask, causal, state, log_decay=None, k_weight=None):
        """Normalised (or not) linear attention over already feature-mapped queries and keys."""
        B, h, n, _ = fq.shape
        km = key_mask(mask, fk)
        if km is not None:                      # padding: no write, no decay
            fk, v = fk * km, v * km
            if log_decay is not None:
                log_decay = log_decay * km[..., 0]
        if k_weight is not None:
            fk = fk * k_weight.unsqueeze(-1)
        dv = v.shape[-1]
        norm_col = self.normalize == "sum"
        if norm_col:                            # ones column: the denominator rides along
            ones = torch.ones_like(v[..., :1]) if km is None else km.expand(B, h, n, 1)
            v = torch.cat([v, ones], -1)
        S0 = None
        if state is not None and "S" in state:
            S0 = torch.cat([state["S"], state["z"].unsqueeze(-1)], -1) if norm_col else state["S"]
        o, S = linear_attention(fq, fk, v, causal=causal, form=self.pick_form(n, state),
                                chunk=self.chunk, log_decay=log_decay, state=S0)
        new_state = None
        if self.normalize == "sum":
            y = o[..., :dv] / self.denominator(o[..., dv:])
            if state is not None:
                new_state = {"S": S[..., :dv], "z": S[..., dv]}
        elif self.normalize == "count":
            before = None if state is None else state.get("count")
            cnt = real_counts(mask, B, n, causal, before, fq.device)   # (B, n)
            y = o / cnt.clamp_min(1.0)[:, None, :, None]
            if state is not None:
                new_state = {"S": S, "count": cnt[:, -1] if n else before}
        else:
            y = o
            if state is not None:
                new_state = {"S": S}
        return y, new_state
