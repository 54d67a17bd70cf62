"""SRU and SRU++: simple recurrent units, and SRU with attention inside the recurrence input.

Papers: Simple Recurrent Units for Highly Parallelizable Recurrence (Lei, Zhang, Wang, Dai &
Artzi, EMNLP 2018), §2 eqs. 3–6; When Attention Meets Fast Recurrence: Training Language Models
with Reduced Compute (SRU++, Lei, 2021), §3 eqs. 1–2; used for masked LMs in Simple Recurrence
Improves Masked Language Models (Lei et al., 2022).

SRU, with U = [W x_t; W_f x_t; W_r x_t] (the only matrix products, batched over all t):
    f_t = σ(W_f x_t + v_f ⊙ c_{t-1} + b_f)                                       (eq. 3)
    c_t = f_t ⊙ c_{t-1} + (1 − f_t) ⊙ (W x_t)                                     (eq. 4)
    r_t = σ(W_r x_t + v_r ⊙ c_{t-1} + b_r)                                       (eq. 5)
    h_t = r_t ⊙ c_t + (1 − r_t) ⊙ x_t                                             (eq. 6)
SRU++ replaces the projection U = W x by self-attention in a small dimension d' (``proj``):
    Q = W^q X,  K = W^k Q,  V = W^v Q,  A = softmax(Q Kᵀ / sqrt(d'/heads)) V (causal, per head),
    U = W^o LayerNorm(Q + α · A),  α a learned scalar initialised to 0                (eq. 1–2)
(the reference code's default ``normalize_after``), then the same elementwise recurrence.

Forms: the recurrence is elementwise (O(n d) total, no d×d product per step). With the
peephole terms v ⊙ c_{t-1} (the papers' form, ``peephole: true``) the gates depend on c_{t-1}, so
it is not a linear recurrence: the forward runs as a sequential elementwise loop over t — as the
authors' CUDA kernel does, parallel over batch and channels — and the backward, whose adjoint
recurrence is linear, runs on ``parallel_scan`` (``PeepholeRecurrence``). With ``peephole: false`` (the 2017 arXiv
form) f, r depend on x only and c_t is a linear recurrence run by ``parallel_scan``
(``form: scan``, O(log n) depth) or the step loop (``form: recurrent``).
Decoding: SRU's state is c_t (O(d), fixed). SRU++ also keeps its attention's keys and values of
the last ``window`` − 1 tokens: its attention sees the keys of the last ``window`` tokens (the
paper's LMs attend within a segment plus a memory of the previous one, a bounded span), so the
state is fixed-size; ``window: 0`` attends to the whole prefix (then the cache grows with n).
Padding: a padded step keeps c and outputs 0 (the reference code's ``mask_pad``).
Initialisation: b_f = 0, b_r = ``highway_bias`` (the reference code's SRU++ default −2),
v ~ U(−a, a) with a = ``weight_c_init``/sqrt(d); α = 0 (every SRU++ layer starts as an SRU
with a low-rank input projection).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.attention import sdpa_attention
from ...nn.blocksparse import band_tables, merge_partials, tile_attention
from ...nn.chunked import fp32_region, upcast
from ...nn.context import MixerContext
from ...nn.masks import attention_mask
from ...nn.scan import linear_recurrence_loop, parallel_scan
from ...registry import MIXERS
from ..base import Mixer, Supports
from .common import hold_on_padding, positive

FORMS = ("scan", "recurrent", "loop")


class PeepholeRecurrence(torch.autograd.Function):
    """c_t, r_t of eqs. 3–5 with the peephole terms, for all t.

    Forward: the sequential elementwise loop (the gates need c_{t−1}), run without building an
    autograd graph. Backward: the adjoint of c_t = f_t c_{t−1} + (1 − f_t) u0_t is the *linear*
    recurrence G_t = ∂L/∂c_t = g_t + α_{t+1} G_{t+1} + ρ_{t+1} v_r backwards in time, with
    α_t = ∂c_t/∂c_{t−1} = f_t + (c_{t−1} − u0_t) f_t(1 − f_t) v_f (1 at padding) and
    ρ_t = ∂L/∂r_t · r_t(1 − r_t) — so it runs on ``parallel_scan``, and every other gradient is
    one vectorised expression of G."""

    @staticmethod
    def forward(ctx, u0, u1, u2, v, bias, c0, m):
        c_prev, cs, fs, rs = c0, [], [], []
        for t in range(u0.shape[1]):
            f_t = torch.sigmoid(u1[:, t] + v[0] * c_prev + bias[0])
            r_t = torch.sigmoid(u2[:, t] + v[1] * c_prev + bias[1])
            c_t = f_t * c_prev + (1 - f_t) * u0[:, t]
            c_t = m[:, t] * c_t + (1 - m[:, t]) * c_prev                # padding: hold c
            cs.append(c_t)
            fs.append(f_t)
            rs.append(r_t)
            c_prev = c_t
        c, f, r = torch.stack(cs, 1), torch.stack(fs, 1), torch.stack(rs, 1)
        ctx.save_for_backward(u0, v, c0, m, c, f, r)
        return c, r

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gc, gr):
        u0, v, c0, m, c, f, r = ctx.saved_tensors
        gc = torch.zeros_like(c) if gc is None else gc
        gr = torch.zeros_like(r) if gr is None else gr
        c_prev = torch.cat([c0[:, None], c[:, :-1]], 1)
        K = m * (c_prev - u0) * f * (1 - f)                             # ∂c_t/∂(pre-activation f)
        alpha = (1 - m) + m * f + K * v[0]                              # ∂c_t/∂c_{t−1}
        rho = gr * r * (1 - r)                                          # ∂L/∂(pre-activation r)
        # G_t = gc_t + α_{t+1} G_{t+1} + ρ_{t+1} v_r, run backwards from G_{n−1} = gc_{n−1}
        a = torch.cat([alpha[:, 1:], torch.zeros_like(alpha[:, :1])], 1)
        b = gc + torch.cat([rho[:, 1:] * v[1], torch.zeros_like(rho[:, :1])], 1)
        G = parallel_scan(a.flip(1), b.flip(1), None, dim=1).flip(1)
        daf = G * K
        du0 = G * m * (1 - f)
        dv = torch.stack([(daf * c_prev).sum((0, 1)), (rho * c_prev).sum((0, 1))])
        dbias = torch.stack([daf.sum((0, 1)), rho.sum((0, 1))])
        dc0 = alpha[:, 0] * G[:, 0] + rho[:, 0] * v[1]
        return du0, daf, rho, dv, dbias, dc0, None


def sru_recurrence(u: Tensor, x: Tensor, v: Tensor | None, bias: Tensor, c0: Tensor | None,
                   mask: Tensor | None, form: str) -> tuple[Tensor, Tensor]:
    """Eqs. 3–6 for U = (u0, u1, u2) each (B, n, d), input x (B, n, d), peephole weights v (2, d)
    or None, bias (2, d). Returns h (B, n, d) and all c (B, n, d)."""
    u0, u1, u2 = u
    if v is None:                                            # gates independent of c: linear
        f = torch.sigmoid(u1 + bias[0])
        r = torch.sigmoid(u2 + bias[1])
        a, b = hold_on_padding(f, (1 - f) * u0, mask)
        c = (parallel_scan(a, b, c0, dim=1) if form == "scan"
             else linear_recurrence_loop(a, b, c0, dim=1))
    else:                                                    # peephole: elementwise loop
        c0 = torch.zeros_like(u0[:, 0]) if c0 is None else c0
        m = (torch.ones_like(u0[..., :1]) if mask is None
             else mask[..., None].to(u0.dtype)).expand_as(u0)
        c, r = PeepholeRecurrence.apply(u0, u1, u2, v, bias, c0, m)
    h = r * c + (1 - r) * x
    if mask is not None:
        h = h * mask[..., None].to(h.dtype)
    return h, c


@MIXERS.register(
    "sru", paper="Simple Recurrent Units for Highly Parallelizable Recurrence (Lei et al., "
                 "2018); Simple Recurrence Improves Masked Language Models (Lei et al., 2022)",
    equation="eqs. 3–6: f_t = σ(W_f x_t + v_f ⊙ c_{t-1} + b_f), c_t = f_t c_{t-1} + (1−f_t) W x_t, "
             "r_t = σ(W_r x_t + v_r ⊙ c_{t-1} + b_r), h_t = r_t c_t + (1−r_t) x_t",
    complexity=("O(n d²) projections + O(n d) elementwise recurrence", "O(n d); decode O(d)"),
    test="tests/papers/test_rnn_qrnn_sru.py::test_sru_equals_loop_of_the_equations",
    tiny={})
class SRU(Mixer):
    """SRU: batched projections and a light elementwise recurrence with a highway output."""

    supports = Supports(causal=True, bidirectional=False, cross=False, cache=True,
                        positions=frozenset({"input"}))

    def __init__(self, d_model: int, peephole: bool = True, form: str = "auto",
                 highway_bias: float = 0.0, weight_c_init: float = 1.0):
        super().__init__()
        self.d = int(d_model)
        if not isinstance(peephole, bool):
            raise ConfigError("mixer.peephole", peephole, why="must be true or false")
        if form == "auto":
            form = "loop" if peephole else "scan"
        if form not in FORMS:
            raise ConfigError("mixer.form", form, FORMS + ("auto",))
        if peephole and form != "loop":
            raise ConfigError("mixer.form", form, why="with peephole: true the gates depend on "
                              "c_{t-1} (not a linear recurrence): only 'loop' (or 'auto') is valid")
        self.peephole, self.form = peephole, form
        self.highway_bias, self.weight_c_init = float(highway_bias), float(weight_c_init)
        self.make_projection()
        self.v = nn.Parameter(torch.empty(2, self.d)) if peephole else None
        self.bias = nn.Parameter(torch.zeros(2, self.d))
        self._reset()

    def make_projection(self):
        self.W = nn.Linear(self.d, 3 * self.d, bias=False)

    def _reset(self):
        with torch.no_grad():
            if self.v is not None:   # reference code: U(−1, 1)·weight_c_init, scaled 1/sqrt(d)
                self.v.uniform_(-1, 1).mul_(self.weight_c_init / math.sqrt(self.d))
            self.bias[0].zero_()
            self.bias[1].fill_(self.highway_bias)

    def projection(self, x: Tensor, ctx: MixerContext, state):
        """U (B, n, 3d) and the projection's own state entries (none for SRU)."""
        return self.W(x), {}

    def init_state(self, batch: int, device=None, dtype=None) -> dict:
        return {"c": torch.zeros(batch, self.d, device=device)}

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        B, n, d = x.shape
        mask = ctx.query_mask(n)
        U, extra = self.projection(x, ctx, state)
        with fp32_region(x.device.type):
            u = upcast(U).chunk(3, -1)
            c0 = None if state is None else state["c"].float()
            form = "recurrent" if (self.form == "scan" and state is not None and n == 1) \
                else self.form
            h, c = sru_recurrence(u, upcast(x), self.v, self.bias, c0, mask, form)
        new_state = None if state is None else {"c": c[:, -1], **extra}
        return h.to(x.dtype), new_state


@MIXERS.register(
    "srupp", paper="When Attention Meets Fast Recurrence: Training Language Models with Reduced "
                   "Compute (SRU++, Lei, 2021)",
    equation="eq. 1–2: Q = W^q x, K = W^k Q, V = W^v Q, U = W^o LN(Q + α softmax(QKᵀ/√d_h) V) "
             "over the last w keys; then SRU eqs. 3–6 with U",
    complexity=("O(n w d' + n d d') attention + O(n d) recurrence", "O(n w + n d); "
                "decode O(w d') K/V + O(d)"),
    test="tests/papers/test_rnn_qrnn_sru.py::test_srupp_equals_attention_then_sru_loop",
    tiny={"proj": 8, "heads": 2, "window": 5})
class SRUpp(SRU):
    """SRU++: SRU whose input projection is a small causal self-attention (Q + α·Attn, LN)."""

    supports = Supports(causal=True, bidirectional=False, cross=False, cache=True,
                        positions=frozenset({"input"}))

    def __init__(self, d_model: int, proj: int = 0, heads: int = 1, window: int = 1024,
                 peephole: bool = True, form: str = "auto", highway_bias: float = -2.0,
                 weight_c_init: float = 1.0):
        proj = int(d_model) // 4 if proj == 0 else proj
        self.proj = positive("mixer.proj", proj)
        self.heads = positive("mixer.heads", heads)
        if isinstance(window, bool) or not isinstance(window, int) or window < 0:
            raise ConfigError("mixer.window", window,
                              why="must be an integer >= 0 (0 = attend to the whole prefix)")
        self.window = int(window)
        if self.proj % self.heads:
            raise ConfigError("mixer.heads", heads,
                              why=f"proj={self.proj} is not divisible by heads={heads}")
        super().__init__(d_model, peephole=peephole, form=form, highway_bias=highway_bias,
                         weight_c_init=weight_c_init)

    def make_projection(self):
        p = self.proj
        self.q_proj = nn.Linear(self.d, p, bias=False)            # W^q
        self.kv_proj = nn.Linear(p, 2 * p, bias=False)            # W^k, W^v act on Q
        self.o_proj = nn.Linear(p, 3 * self.d, bias=False)        # W^o
        self.norm = nn.LayerNorm(p)
        self.alpha = nn.Parameter(torch.zeros(()))                # α, "rezero" init 0

    def projection(self, x: Tensor, ctx: MixerContext, state):
        B, n, _ = x.shape
        H, e = self.heads, self.proj // self.heads
        q = self.q_proj(x)                                        # (B, n, d')
        k, v = self.kv_proj(q).chunk(2, -1)
        split = lambda t: t.view(B, -1, H, e).transpose(1, 2)     # noqa: E731 (B, H, n, e)
        qh, kh, vh = split(q), split(k), split(v)
        if state is not None and "k" in state:
            kh = torch.cat([state["k"], kh], 2)
            vh = torch.cat([state["v"], vh], 2)
        n_k = kh.shape[2]
        kpm = None if ctx.key_padding_mask is None else ctx.key_padding_mask[:, -n_k:]
        w = self.window
        if w and n > w:                                           # band of the last w keys,
            a = self._band_attention(qh, kh, vh, kpm, w)          # tiled: O(n w), no n × n
        else:
            mask = attention_mask(n, n_k, ctx.causal, kpm, x.device)
            if w:                                                 # keys of the last w tokens
                i = torch.arange(n, device=x.device)[:, None] + (n_k - n)
                band = (i - torch.arange(n_k, device=x.device)[None, :]) < w
                mask = band[None, None] if mask is None else mask & band
            a = sdpa_attention(qh, kh, vh, mask=mask)             # (B, H, n, e)
        keep = n_k if not w else min(n_k, w - 1)
        extra = {} if state is None else {"k": kh[:, :, n_k - keep:], "v": vh[:, :, n_k - keep:]}
        a = a.transpose(1, 2).reshape(B, n, self.proj)
        return self.o_proj(self.norm(q + self.alpha * a)), extra

    @staticmethod
    def _band_attention(q: Tensor, k: Tensor, v: Tensor, kpm: Tensor | None, w: int) -> Tensor:
        """Causal attention of q (B, H, n, e) to the keys 0..w−1 places back, by the shared tiled
        kernel (``tevo.nn.blocksparse``): blocks of w queries see their 2w − 1 nearest keys."""
        B, n, n_k = q.shape[0], q.shape[2], k.shape[2]
        off = n_k - n                                             # query i is key off + i
        q_idx, k_idx = band_tables(n, n_k, off, w, w - 1, 0, device=q.device)
        q_pos = (torch.arange(n, device=q.device) + off).expand(B, n)
        k_pos = torch.arange(n_k, device=q.device).expand(B, n_k)

        def allow(qp, kp):
            return (qp - kp >= 0) & (qp - kp < w)

        part = tile_attention(q, k, v, q_idx, k_idx, q_pos, k_pos, kpm, allow=allow)
        return merge_partials([part], q.dtype)
