"""H3: a shift SSM and a diagonal SSM with multiplicative interactions.

Paper: Hungry Hungry Hippos: Towards Language Modeling with State Space Models (Fu, Dao, Saab,
Thomas, Rudra & Ré, ICLR 2023), §3.1, Algorithm 1:

    Q, K, V = W_q x, W_k x, W_v x
    K̃ = SSM_shift(K):   x_t = S x_{t-1} + e₁ K_t,  K̃_t = C_s · x_t + D_s K_t
        (A = S the shift matrix, B = e₁: a learned causal convolution of length T = shift_size)
    per head h (head_dim p):  KV_t = K̃_t V_tᵀ  (p × p)
    O_t = Q_t · SSM_diag(KV)_t          SSM_diag: the S4D diagonal SSM (+ D ⊙ KV_t), per head
    y = W_o O

The shift SSM lets a token compare itself with the previous ones (K̃ remembers the last T keys),
the diagonal SSM carries KV over the whole history: together they do associative recall. Forms:
FFT convolutions for training (both SSMs are convolutions from a zero state); decoding keeps the
shift register (the last T − 1 keys) and the diagonal SSM state (B, p, p, h, N/2) — fixed size.
``form: scan`` runs the diagonal SSM with the parallel scan instead. Complexity: O(n log n · d p)
time, O(n d p) memory to train; O(d (T + p N)) per decoded token.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.context import MixerContext
from ...nn.fftconv import conv_buffer, conv_with_state, fft_conv
from ...nn.ssm import check_positive
from ...registry import MIXERS
from ..base import Mixer, Supports
from .common import DiagonalSSM
from .s4d import FORMS, masked


@MIXERS.register(
    "h3",
    paper="Hungry Hungry Hippos: Towards Language Modeling with State Space Models (Fu et al., "
          "ICLR 2023)",
    equation="Alg. 1: O = Q ⊙ SSM_diag(SSM_shift(K) ⊙ V) (per head: Q·SSM_diag(K̃Vᵀ)), "
             "SSM_shift: A = shift, B = e₁; SSM_diag: S4D",
    complexity=("O(d p n log n) train; O(d (T + p N)) per decoded token",
                "O(d p n) train; O(d (T + p N)) state"),
    test="tests/papers/test_ssm_h3.py::test_h3_recurrent_decode_equals_parallel_and_loop",
    tiny={"state_size": 4, "shift_size": 4, "head_dim": 2})
class H3(Mixer):
    """H3: shift-SSM keys times values through a diagonal SSM, read out by queries."""

    supports = Supports(causal=True, bidirectional=False, cache=True)

    def __init__(self, d_model: int, state_size: int = 64, shift_size: int | None = None,
                 head_dim: int = 1, discretization: str = "zoh", form: str = "conv",
                 dt_min: float = 1e-3, dt_max: float = 1e-1):
        super().__init__()
        check_positive("mixer.head_dim", head_dim)
        if d_model % head_dim:
            raise ConfigError("mixer.head_dim", head_dim,
                              why=f"must divide d_model={d_model}, got {head_dim}")
        T = check_positive("mixer.shift_size", state_size if shift_size is None else shift_size)
        if form not in FORMS:
            raise ConfigError("mixer.form", form, FORMS)
        self.d_model, self.p, self.heads, self.T, self.form = (d_model, head_dim,
                                                                d_model // head_dim, T, form)
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.shift_C = nn.Parameter(torch.randn(d_model, T) / T ** 0.5)   # taps of SSM_shift
        self.shift_D = nn.Parameter(torch.randn(d_model))
        self.ssm = DiagonalSSM(self.heads, state_size, 1, discretization, dt_min, dt_max)
        self.D = nn.Parameter(torch.randn(self.heads))
        self.o_proj = nn.Linear(d_model, d_model)

    def init_state(self, batch: int, device=None, dtype=None) -> dict:
        return {"shift": conv_buffer(batch, self.T, self.d_model, device),
                "x": self.ssm.init_state(batch, self.p, self.p, device=device)}

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        B, n, _ = x.shape
        h, p = self.heads, self.p
        mask = ctx.query_mask(n)
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
            q, k, v = (masked(proj(xf.to(proj.weight.dtype)), mask)
                       for proj in (self.q_proj, self.k_proj, self.v_proj))   # (B, n, d)
            if state is None:                                    # K̃ = SSM_shift(K)
                k = fft_conv(k, self.shift_C, self.shift_D)
            else:
                k, shift = conv_with_state(k, self.shift_C, state["shift"], self.shift_D)
            # (B, n, p1, p2, h): every (p1, p2) entry of K̃Vᵀ goes through head h's SSM
            kv = (k.view(B, n, h, p).permute(0, 1, 3, 2).unsqueeze(3)
                  * v.view(B, n, h, p).permute(0, 1, 3, 2).unsqueeze(2))
            x0 = None if state is None else state["x"]
            y, x_last = self.ssm.run(kv, x0, self.form)          # (B, n, p1, p2, h)
            y = y + kv * self.D
            qh = q.view(B, n, h, p).permute(0, 1, 3, 2).unsqueeze(3)           # (B,n,p1,1,h)
            o = (qh * y).sum(2).permute(0, 1, 3, 2).reshape(B, n, self.d_model)  # Σ_p1
        new_state = None if state is None else {"shift": shift, "x": x_last}
        return self.o_proj(o.to(x.dtype)), new_state
