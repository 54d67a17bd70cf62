"""BiGS: a bidirectional gated SSM block, for encoders pretrained without attention.

Paper: Pretraining Without Attention (Wang, Yan, Gu & Rush, Findings of EMNLP 2023), §3,
Figure 2, as in the authors' ``BiGSLayer``:

    V   = GELU(W_v X)                                   (B, n, e·d) multiplicative gate
    F   = SSM_→(GELU(W_f X))                            forward S4D, left to right
    Bk  = flip(SSM_←(flip(GELU(W_b X))))                backward S4D, right to left
    U   = (W_uf F) ⊙ (W_ub Bk)                          the two directions meet multiplicatively
    Y   = W_o (GELU(W_ol U) ⊙ V)

Each SSM_→/← is one S4D system shared by all channels (the authors' S4DKernel has a single
(Λ, Δ, C) and scalar D), run as an FFT convolution with its kernel. Bidirectional only: a token
sees the whole sequence, so there is no causal form and no decoding state. Padding (right
padding) is zeroed before both SSMs, so it never reaches a real token. Layer norm and the
residual of the authors' layer are the model's. Complexity: O(e d n + d n log n) time,
O(e d n) memory.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.context import MixerContext
from ...nn.ssm import check_positive
from ...registry import MIXERS
from ..base import Mixer, Supports
from .common import DiagonalSSM
from .s4d import masked


@MIXERS.register(
    "bigs",
    paper="Pretraining Without Attention (BiGS, Wang et al., Findings of EMNLP 2023)",
    equation="Y = W_o(GELU(W_ol((W_uf SSM_→(GELU(W_f X))) ⊙ (W_ub flip SSM_←(flip GELU(W_b X))))) "
             "⊙ GELU(W_v X))",
    complexity=("O(e d n + d n log n)", "O(e d n)"),
    test="tests/papers/test_ssm_bigs.py::test_bigs_equals_forward_and_backward_recurrence_loops",
    tiny={"state_size": 8, "expand": 2})
class BiGS(Mixer):
    """BiGS: forward and backward S4D branches meeting multiplicatively, gated by GELU(W_v X)."""

    supports = Supports(causal=False, bidirectional=True, cache=False)

    def __init__(self, d_model: int, state_size: int = 64, expand: int = 3,
                 dt_min: float = 0.01, dt_max: float = 1.0, causal: bool = False):
        super().__init__()
        if causal:
            raise ConfigError("mixer.causal", causal,
                              why="bigs is bidirectional only (valid: causal: false)")
        e = check_positive("mixer.expand", expand)
        self.d_model = d_model
        self.w_v = nn.Linear(d_model, e * d_model)
        self.w_f = nn.Linear(d_model, d_model)
        self.w_b = nn.Linear(d_model, d_model)
        self.ssm_f = DiagonalSSM(1, state_size, 1, "zoh", dt_min, dt_max)
        self.ssm_b = DiagonalSSM(1, state_size, 1, "zoh", dt_min, dt_max)
        self.D = nn.Parameter(torch.randn(2))                          # scalar D per direction
        self.w_uf = nn.Linear(d_model, d_model)
        self.w_ub = nn.Linear(d_model, d_model)
        self.w_ol = nn.Linear(d_model, e * d_model)
        self.w_o = nn.Linear(e * d_model, d_model)

    def directions(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """(F, Bk): the forward and backward SSM outputs, (B, n, d) each."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.float() if self.w_f.weight.dtype == torch.float32 else x
            uf = masked(F.gelu(self.w_f(xf)), mask).unsqueeze(-1)           # (B, n, d, 1)
            ub = masked(F.gelu(self.w_b(xf)), mask).flip(1).unsqueeze(-1)
            D = self.D.float()
            f = self.ssm_f.run(uf)[0] + D[0] * uf
            b = (self.ssm_b.run(ub)[0] + D[1] * ub).flip(1)
        return f[..., 0], b[..., 0]

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        f, b = self.directions(x, ctx.query_mask(x.shape[1]))
        v = F.gelu(self.w_v(x))
        u = self.w_uf(f.to(x.dtype)) * self.w_ub(b.to(x.dtype))
        return self.w_o(F.gelu(self.w_ol(u)) * v), None
