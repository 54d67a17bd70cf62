"""Chunked kernels for causal linear recurrences, each in several forms that must agree.

1. (Gated) linear attention — Transformers are RNNs (Katharopoulos et al., 2020), eq. 4–6;
   RFA gating (Peng et al., 2021); chunk form as in GLA / flash-linear-attention:

       S_t = exp(g_t) · S_{t-1} + k_t v_tᵀ,      o_t = q_tᵀ S_t      (g_t ≤ 0 log-decay, or none)

   forms: ``parallel`` (masked quadratic, O(n² d) time, O(n²) memory), ``chunk`` (quadratic
   inside chunks of C, all chunks in batched matmuls; the chunk-boundary states by a cumulative
   sum of the chunk updates — by ``parallel_scan`` with a decay: O(n C d + n d²) time,
   O(n C + n d²/C) memory, never an n × n matrix), ``scan`` (the boundary states always by the
   associative ``parallel_scan``: O(log(n/C)) depth, O(n d²/C + n C) memory), ``recurrent``
   (one token at a time; the decoding form; the state S is O(d_k d_v) and does not grow with n).
   Bidirectional: o_i = q_iᵀ Σ_j k_j v_jᵀ (O(n d²)) or the quadratic form.

2. The delta rule — Linear Transformers Are Secretly Fast Weight Programmers (Schlag et al.,
   2021), eq. 23–25; chunk form by the WY/UT transform (Yang et al., 2024, "Parallelizing Linear
   Transformers with the Delta Rule over Sequence Length"):

       S_t = S_{t-1} + β_t k_t (v_t − S_{t-1}ᵀ k_t)ᵀ,      o_t = S_tᵀ q_t

3. The cumulative softmax average (AFT-simple, separable attention), stable in log space:

       y_t = Σ_{j≤t} exp(l_j) v_j / Σ_{j≤t} exp(l_j)
           = exp(L_{t-1} − L_t) y_{t-1} + exp(l_t − L_t) v_t,   L_t = log Σ_{j≤t} exp(l_j)

   a linear recurrence with coefficients in [0, 1], run by ``parallel_scan``.

Every kernel takes and returns the recurrent state, so a prefill followed by single-token steps
continues exactly. Normalised linear attention appends a ones column to v: the last column of the
output is the denominator q_tᵀ z_t, and of the state the normaliser z_t.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor

from ..errors import ConfigError
from .scan import parallel_scan

FORMS = ("parallel", "chunk", "scan", "recurrent")
DELTA_FORMS = ("parallel", "chunk", "recurrent")
NEG = -1e30          # a finite "−∞": masked logits stay differentiable (−inf gives NaN grads)


@contextmanager
def fp32_region(device_type: str):
    """Run a kernel with autocast off so its states accumulate in fp32 under bf16 autocast."""
    with torch.autocast(device_type=device_type, enabled=False):
        yield


def upcast(t: Tensor) -> Tensor:
    """fp16/bf16 → fp32 (states accumulate in fp32); fp32 and fp64 are kept as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def safe_denominator(den: Tensor, eps: float) -> Tensor:
    """Keep |den| ≥ eps with its sign (0 counts as positive): guards normalised linear attention
    against division by zero, also for feature maps that are not positive (random Fourier)."""
    return torch.where(den >= 0, den.clamp_min(eps), den.clamp_max(-eps))


def check_form(form: str, forms=FORMS, field: str = "mixer.form") -> str:
    if form not in forms:
        raise ConfigError(field, form, forms)
    return form


# -------------------------------------------------------------------------------------------
# 1. (gated) linear attention
# -------------------------------------------------------------------------------------------
def linear_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = True,
                     form: str = "chunk", chunk: int = 64, log_decay: Tensor | None = None,
                     state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """o_t = q_tᵀ S_t (unnormalised). q, k: (B, h, n, d_k); v: (B, h, n, d_v); log_decay: (B, h,
    n) or None; state: S (B, h, d_k, d_v) before the first token (None = zeros).
    Returns o (B, h, n, d_v) and the state after the last token."""
    check_form(form)
    B, h, n, dk = q.shape
    S0 = state if state is not None else q.new_zeros(B, h, dk, v.shape[-1])
    if not causal:
        if log_decay is not None:
            raise ValueError("a decay needs a causal order")
        if form == "parallel":
            o = (q @ k.transpose(-1, -2)) @ v                    # (B, h, n, d_v) via n × n
        else:
            o = q @ (k.transpose(-1, -2) @ v)                    # via d_k × d_v: O(n d²)
        return o + q @ S0, S0 + k.transpose(-1, -2) @ v
    if form == "parallel":
        return _chunk_step(q, k, v, log_decay, S0)
    if form == "recurrent":
        return _recurrent(q, k, v, log_decay, S0)
    return _chunk_scan(q, k, v, log_decay, S0, chunk, cumulative=form == "chunk")


def _decay_mask(G: Tensor) -> Tensor:
    """(…, L) cumulative log-decay → (…, L, L) weights exp(G_i − G_j) for j ≤ i, else 0."""
    L = G.shape[-1]
    tril = torch.ones(L, L, dtype=torch.bool, device=G.device).tril()
    diff = G.unsqueeze(-1) - G.unsqueeze(-2)                      # (…, L, L)
    return diff.masked_fill(~tril, NEG).exp()


def _chunk_step(q, k, v, g, S):
    """One chunk (or the whole sequence: the parallel form), starting from state S."""
    L = q.shape[-2]
    scores = q @ k.transpose(-1, -2)                              # (B, h, L, L)
    if g is None:
        tril = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
        o = scores.masked_fill(~tril, 0.0) @ v + q @ S
        return o, S + k.transpose(-1, -2) @ v
    G = g.cumsum(-1)                                              # (B, h, L)
    o = (scores * _decay_mask(G)) @ v + G.exp().unsqueeze(-1) * (q @ S)
    last = G[..., -1:]                                            # (B, h, 1)
    k_w = k * (last - G).exp().unsqueeze(-1)                      # decay each key to the end
    return o, last.exp().unsqueeze(-1) * S + k_w.transpose(-1, -2) @ v


def _recurrent(q, k, v, g, S):
    outs = []
    for t in range(q.shape[-2]):
        if g is not None:
            S = g[..., t].exp()[..., None, None] * S
        S = S + k[..., t, :, None] * v[..., t, None, :]           # rank-1 write (B, h, d_k, d_v)
        outs.append((q[..., t, None, :] @ S).squeeze(-2))         # read (B, h, d_v)
    return torch.stack(outs, -2), S


def _chunk_scan(q, k, v, g, S0, C, cumulative: bool = False):
    """All chunks at once: a few batched matmuls over (B, h, G chunks, C, ·) tensors, with the
    chunk-boundary states from the per-chunk updates ΔS_g = Σ_{t∈g} (decay to the chunk end)
    k_t v_tᵀ. ``cumulative`` (the chunk form): without a decay S_before_g = S_0 + Σ_{j<g} ΔS_j
    is one cumulative sum; with one, and in the scan form, the associative ``parallel_scan``
    over chunks. No Python loop over chunks: a loop saved one state and a few small matmuls
    per chunk for the backward and ran n/C sequential steps (fitted exponent ≈ 1.5 over
    1k–16k at width 128); this is O(n C d + n d²) work in O(log(n/C)) or O(1) steps."""
    B, h, n, dk = q.shape
    dv = v.shape[-1]
    pad = (-n) % C
    if pad:                                    # zero keys/values, no decay: change nothing
        q, k, v = (torch.nn.functional.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        if g is not None:
            g = torch.nn.functional.pad(g, (0, pad))
    G_n = (n + pad) // C
    qc, kc, vc = (t.reshape(B, h, G_n, C, -1) for t in (q, k, v))  # (B, h, G, C, ·)
    scores = qc @ kc.transpose(-1, -2)                            # (B, h, G, C, C)
    if g is None:
        dS = kc.transpose(-1, -2) @ vc                            # (B, h, G, d_k, d_v)
        tril = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~tril, 0.0)
    else:
        Gc = g.reshape(B, h, G_n, C).cumsum(-1)                   # within-chunk cumulative
        last = Gc[..., -1:]                                       # (B, h, G, 1)
        dS = (kc * (last - Gc).exp().unsqueeze(-1)).transpose(-1, -2) @ vc
        scores = scores * _decay_mask(Gc)
    if cumulative and g is None:
        S_after = S0.unsqueeze(2) + dS.cumsum(2)                  # (B, h, G, d_k, d_v)
    else:
        a = (q.new_ones(B, h, G_n, 1, 1) if g is None
             else last.exp().unsqueeze(-1))                       # (B, h, G, 1, 1)
        S_after = parallel_scan(a, dS, h0=S0, dim=2)
    S_before = torch.cat([S0.unsqueeze(2), S_after[:, :, :-1]], 2)
    inter = qc @ S_before                                         # (B, h, G, C, d_v)
    if g is not None:
        inter = Gc.exp().unsqueeze(-1) * inter
    o = scores @ vc + inter
    o = o.reshape(B, h, G_n * C, dv)[:, :, :n]
    return o, S_after[:, :, -1]


# -------------------------------------------------------------------------------------------
# 2. the delta rule (fast weight programmers)
# -------------------------------------------------------------------------------------------
def delta_rule(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, *, form: str = "chunk",
               chunk: int = 64, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """o_t = S_tᵀ q_t with S_t = S_{t-1} + β_t k_t (v_t − S_{t-1}ᵀ k_t)ᵀ.
    q, k: (B, h, n, d_k); v: (B, h, n, d_v); beta: (B, h, n); state S (B, h, d_k, d_v).
    ``parallel`` is the chunk form with one chunk of n (an n × n triangular solve)."""
    check_form(form, DELTA_FORMS)
    B, h, n, dk = q.shape
    S = state if state is not None else q.new_zeros(B, h, dk, v.shape[-1])
    if form == "recurrent":
        outs = []
        for t in range(n):
            kt, vt, bt = k[..., t, :], v[..., t, :], beta[..., t, None]
            v_old = (kt.unsqueeze(-2) @ S).squeeze(-2)            # S^T k: what S recalls for k
            S = S + kt.unsqueeze(-1) * (bt * (vt - v_old)).unsqueeze(-2)
            outs.append((q[..., t, None, :] @ S).squeeze(-2))
        return torch.stack(outs, -2), S
    C = n if form == "parallel" else chunk
    outs = []
    for s in range(0, n, C):
        o, S = _delta_chunk_step(q[..., s:s + C, :], k[..., s:s + C, :], v[..., s:s + C, :],
                                 beta[..., s:s + C], S)
        outs.append(o)
    return torch.cat(outs, -2), S


def _delta_chunk_step(q, k, v, beta, S):
    """u_i = β_i (v_i − S_{i-1}ᵀ k_i) for a chunk at once: (I + diag(β) tril(KKᵀ, −1)) U =
    diag(β)(V − K S_0), solved by forward substitution; then S_L = S_0 + Kᵀ U."""
    L, dk = q.shape[-2], q.shape[-1]
    kb = k * beta.unsqueeze(-1)
    strict = torch.ones(L, L, dtype=torch.bool, device=q.device).tril(-1)
    A = (kb @ k.transpose(-1, -2)).masked_fill(~strict, 0.0)
    A = A + torch.eye(L, dtype=q.dtype, device=q.device)          # unit lower triangular
    rhs = torch.cat([kb, v * beta.unsqueeze(-1)], -1)             # (B, h, L, d_k + d_v)
    T = torch.linalg.solve_triangular(A, rhs, upper=False, unitriangular=True)
    W, U = T[..., :dk], T[..., dk:]
    U = U - W @ S                                                  # new values (B, h, L, d_v)
    incl = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    o = q @ S + (q @ k.transpose(-1, -2)).masked_fill(~incl, 0.0) @ U
    return o, S + k.transpose(-1, -2) @ U


# -------------------------------------------------------------------------------------------
# 3. the cumulative softmax average
# -------------------------------------------------------------------------------------------
CUMSOFTMAX_FORMS = ("parallel", "scan", "recurrent")


def cumulative_softmax_average(logits: Tensor, values: Tensor, *, causal: bool = True,
                               mask: Tensor | None = None, state: dict | None = None,
                               form: str = "scan") -> tuple[Tensor, Tensor, dict]:
    """y_t = Σ_{j≤t} exp(l_j) v_j / Σ_{j≤t} exp(l_j), per channel, along dim 1 (time).

    logits (B, n, *F) and values (B, n, *F') broadcast against each other (a scalar logit per
    token: F = (1,)); mask (B, n) True = real token (padding contributes nothing); state
    {"L": (B, *F), "y": (B, *F')}: the log-normaliser and the average of the history, which act
    exactly like one extra token with logit L and value y. Returns y (B, n, ...), the
    log-normalisers L (B, n, *F) and the state after the last token. Bidirectional: every
    position gets the average over all real tokens."""
    check_form(form, CUMSOFTMAX_FORMS)
    if mask is not None:
        m = mask.view(*mask.shape, *([1] * (logits.dim() - 2)))
        logits = logits.masked_fill(~m, NEG)
        values = values * mask.view(*mask.shape, *([1] * (values.dim() - 2))).to(values.dtype)
    if logits.dim() != values.dim():
        raise ValueError("logits and values need the same number of dims (use size-1 dims)")
    values = values.expand(torch.broadcast_shapes(logits.shape, values.shape))
    past = state is not None and "L" in state
    if past:                                    # the history as one virtual first token
        logits = torch.cat([state["L"].unsqueeze(1), logits], 1)
        values = torch.cat([state["y"].unsqueeze(1), values], 1)
    if not causal:
        L = torch.logsumexp(logits, 1, keepdim=True)              # (B, 1, *F)
        y = ((logits - L).exp() * values).sum(1, keepdim=True)
        n = logits.shape[1]
        y, L = y.expand(-1, n, *y.shape[2:]), L.expand(-1, n, *L.shape[2:])
    elif form == "parallel":
        n = logits.shape[1]
        tril = torch.ones(n, n, dtype=torch.bool, device=logits.device).tril()
        shape = (1, n, n) + (1,) * (logits.dim() - 2)
        keep = tril.view(shape)
        lj = logits.unsqueeze(1).masked_fill(~keep, NEG)                # (B, t, j, *F)
        L = torch.logsumexp(lj, 2)                                      # (B, t, *F)
        w = (lj - L.unsqueeze(2)).exp() * keep                          # future weights = 0
        y = (w * values.unsqueeze(1)).sum(2)
    elif form == "scan":
        L = torch.logcumsumexp(logits, 1)
        L_prev = torch.cat([torch.full_like(L[:, :1], NEG), L[:, :-1]], 1)
        a = (L_prev - L).exp()                                    # ≤ 1: shrink the history
        b = (logits - L).exp() * values                           # weight of the new token
        y = parallel_scan(a, b, dim=1)
    else:
        Lt, yt = None, None
        ys, Ls = [], []
        for t in range(logits.shape[1]):
            lt, vt = logits[:, t], values[:, t]
            if Lt is None:
                Lt, yt = lt, vt
            else:
                Ln = torch.logaddexp(Lt, lt)
                yt = (Lt - Ln).exp() * yt + (lt - Ln).exp() * vt
                Lt = Ln
            ys.append(yt)
            Ls.append(Lt)
        y, L = torch.stack(ys, 1), torch.stack(Ls, 1)
    if past:
        y, L = y[:, 1:], L[:, 1:]
    return y, L, {"L": L[:, -1], "y": y[:, -1]}
