"""FLASH: a GAU with mixed chunk attention — quadratic inside chunks, linear across them.

Paper: Transformer Quality in Linear Time (Hua, Dai, Liu & Le, ICML 2022), §3.2 eq. 6–8 and
Code 6–8 ("mixed chunk attention"); the FLASH post of the survey (Su, 2022).

Tokens are grouped into chunks of C by their running count (chunk g holds real tokens gC..gC+C−1,
padding skipped). From the shared base Z come four per-dimension scaled/offset copies:

    quad_i = Σ_{j ∈ chunk(i), j ≤ i} relu²(q̂_iᵀk̂_j/√s) v_j              (quadratic, inside chunk)
    lin_i  = q_iᵀ Σ_{chunks h < chunk(i)} Σ_{j ∈ h} k_j v_jᵀ             (linear, across chunks)
    O = (U ⊙ (quad + lin)/n_i) W_o

(bidirectional: no causal mask inside the chunk, and the linear part sums over every chunk,
the own one included, as in the paper's non-causal code). n_i counts the real keys query i sees
(the relu²/n normalisation of GAU, per query so the causal form is decodable). s = head_dim.

Forms: ``chunk`` (O(n C (s+e) + n s e) time, O(n (s+e) + C²) memory), ``recurrent`` (decoding:
a running linear state S plus a buffer of the current chunk's keys/values — at most C tokens —
so the state does not grow with n), ``parallel`` (the masked O(n²) reference). The causal chunk
form equals the recurrent form.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.chunked import check_form, fp32_region, upcast
from ...nn.context import MixerContext
from ...registry import MIXERS
from ..base import Mixer, Supports
from .gau import GAUProjections, check_single_head

FLASH_FORMS = ("parallel", "chunk", "recurrent")


@MIXERS.register(
    "flash_linear", paper="Transformer Quality in Linear Time (FLASH; Hua et al., ICML 2022)",
    equation="§3.2 eq. 6–8: O = (U ⊙ [relu²(Q̂K̂ᵀ/√s) within chunk + Q_lin Σ_{earlier chunks} "
             "K_linᵀV]/n) W_o",
    complexity=("O(n C (s + e) + n s e)", "O(n (s + e) + C²); state O(s e + C (s + e))"),
    test="tests/papers/test_linear_flash.py::test_causal_chunk_form_equals_recurrent",
    tiny={"heads": 1, "head_dim": 8, "expansion": 2, "chunk": 4, "qk_init_std": 1.0})
class FlashLinear(Mixer):
    """GAU with mixed chunk attention: relu² inside chunks, linear attention across chunks."""

    supports = Supports(causal=True, bidirectional=True, cross=False, cache=True,
                        positions=frozenset({"input", "qk"}))

    def __init__(self, d_model: int, heads: int = 1, head_dim: int = 128, expansion: float = 2.0,
                 chunk: int = 256, form: str = "chunk", qk_init_std: float = 0.02,
                 bias: bool = True):
        super().__init__()
        check_single_head(heads)
        if int(chunk) < 1:
            raise ConfigError("mixer.chunk", chunk, why="must be >= 1")
        self.chunk, self.form = int(chunk), check_form(form, FLASH_FORMS)
        self.proj = GAUProjections(d_model, expansion, head_dim, 4, qk_init_std, bias)
        self.s, self.e = self.proj.s, self.proj.e
        self.o_proj = nn.Linear(self.e, d_model, bias=bias)

    def init_state(self, batch: int, device=None, dtype=None) -> dict:
        return {}

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        B, n, _ = x.shape
        u, v, (qq, kq, ql, kl) = self.proj(x)
        pos = ctx.query_positions(x)
        if ctx.pos is not None and "qk" in ctx.pos.hooks:
            qq, kq = (t.squeeze(1) for t in ctx.pos.rotate(qq.unsqueeze(1), kq.unsqueeze(1),
                                                           pos, pos))
            ql, kl = (t.squeeze(1) for t in ctx.pos.rotate(ql.unsqueeze(1), kl.unsqueeze(1),
                                                           pos, pos))
        mask = ctx.query_mask(n)
        real = torch.ones(B, n, dtype=torch.bool, device=x.device) if mask is None else mask
        dtype = v.dtype
        with fp32_region(x.device.type):
            t = [upcast(a) for a in (qq, kq, ql, kl, v)]
            form = "recurrent" if (state is not None and n == 1) else self.form
            if form == "parallel" and not (state and "S" in state):
                y = self._parallel(*t, real, ctx.causal)
                new_state = None
                if state is not None:
                    _, new_state = self._chunked(*t, real, ctx.causal, state)
            elif form == "recurrent" and ctx.causal:
                ys, st = [], state if state is not None else {}
                for i in range(n):
                    yi, st = self._chunked(*(a[:, i:i + 1] for a in t), real[:, i:i + 1], True,
                                           st)
                    ys.append(yi)
                y, new_state = torch.cat(ys, 1), (st if state is not None else None)
            else:
                y, new_state = self._chunked(*t, real, ctx.causal, state)
        return self.o_proj(u * y.to(dtype)), new_state

    # -- the masked O(n²) reference ------------------------------------------------------------
    def _parallel(self, qq, kq, ql, kl, v, real, causal):
        n = qq.shape[1]
        rank = real.long().cumsum(-1) - 1
        cid = torch.div(rank, self.chunk, rounding_mode="floor")          # chunk of each token
        same = cid[:, :, None] == cid[:, None, :]                         # (B, n, n)
        key = real[:, None, :]
        tril = torch.ones(n, n, dtype=torch.bool, device=qq.device).tril()
        m_quad = same & key & (tril if causal else True)
        m_lin = key & ((cid[:, None, :] < cid[:, :, None]) if causal else True)
        quad = F.relu(qq @ kq.transpose(-1, -2) / math.sqrt(self.s)) ** 2
        A = quad * m_quad + (ql @ kl.transpose(-1, -2)) * m_lin
        cnt = rank + 1 if causal else real.sum(-1, keepdim=True).expand_as(rank)
        return (A @ v) / cnt.clamp_min(1).unsqueeze(-1)

    # -- chunk form (also the recurrent step) -------------------------------------------------
    def _chunked(self, qq, kq, ql, kl, v, real, causal, state):
        """Scatter real tokens (after the buffered ones of the current chunk) to chunk-aligned
        slots, run quadratic-within / linear-across, gather back; returns y and the new state."""
        B, n, s = qq.shape
        e, C, dev = v.shape[-1], self.chunk, qq.device
        st = state or {}
        fill0 = st.get("fill", torch.zeros(B, dtype=torch.long, device=dev))
        count0 = st.get("count", torch.zeros(B, dtype=torch.long, device=dev))
        S0 = st.get("S", qq.new_zeros(B, s, e))
        L = real.long().sum(-1)
        rank = real.long().cumsum(-1) - 1
        A = max(C, math.ceil(int((fill0 + L).max()) / C) * C)             # aligned length
        slot = torch.where(real, fill0[:, None] + rank, torch.full_like(rank, A))   # pads → dump
        bufmask = (torch.arange(C, device=dev)[None] < fill0[:, None]).unsqueeze(-1)

        def aligned(new, buf_key):
            buf = st.get(buf_key, new.new_zeros(B, C, new.shape[-1])) * bufmask
            out = torch.cat([buf, new.new_zeros(B, A + 1 - C, new.shape[-1])], 1)
            idx = slot.unsqueeze(-1).expand(-1, -1, new.shape[-1])
            return out.scatter(1, idx, new)[:, :A]                        # (B, A, ·)

        Kq, Kl, V = aligned(kq, "kq"), aligned(kl, "kl"), aligned(v, "v")
        Qq, Ql = aligned(qq, "_"), aligned(ql, "_")                       # buffer queries: unused
        valid = torch.arange(A, device=dev)[None] < (fill0 + L)[:, None]  # (B, A)
        G = A // C
        Qq, Kq, Ql, Kl, V = (a.view(B, G, C, -1) for a in (Qq, Kq, Ql, Kl, V))   # (B, G, C, ·)
        vmask = valid.view(B, G, 1, C)
        quad = F.relu(Qq @ Kq.transpose(-1, -2) / math.sqrt(self.s)) ** 2  # (B, G, C, C)
        quad = quad * vmask
        if causal:
            quad = quad.tril()
        out = quad @ V
        KV = (Kl * valid.view(B, G, C, 1)).transpose(-1, -2) @ V          # (B, G, s, e)
        if causal:
            S_incl = S0[:, None] + KV.cumsum(1)                            # after each chunk
            S_excl = torch.cat([S0[:, None], S_incl[:, :-1]], 1)           # before each chunk
            out = out + Ql @ S_excl
        else:
            out = out + Ql @ (S0 + KV.sum(1))[:, None]
        out = out.reshape(B, A, e)
        idx = slot.clamp_max(A - 1).unsqueeze(-1).expand(-1, -1, e)
        y = out.gather(1, idx) * real.unsqueeze(-1)                       # back to token order
        cnt = (count0[:, None] + rank + 1) if causal else L[:, None].expand(B, n)
        y = y / cnt.clamp_min(1).unsqueeze(-1).to(y.dtype)
        if state is None or not causal:
            return y, None
        total = fill0 + L
        done = torch.div(total, C, rounding_mode="floor")                  # completed chunks
        S_all = torch.cat([S0[:, None], S_incl], 1)                        # (B, G + 1, s, e)
        S_new = S_all[torch.arange(B, device=dev), done]
        pad = lambda a: torch.cat([a, a.new_zeros(B, 1, C, a.shape[-1])], 1)   # noqa: E731
        bi = torch.arange(B, device=dev)
        new = {"S": S_new, "fill": total - done * C, "count": count0 + L,
               "kq": pad(Kq)[bi, done], "kl": pad(Kl)[bi, done], "v": pad(V)[bi, done]}
        return y, new
