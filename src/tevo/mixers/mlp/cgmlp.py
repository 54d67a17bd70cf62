"""cgMLP: the convolutional gating MLP, Branchformer's local branch.

Papers: MLP-based architecture with variable length input for automatic speech recognition
(Sakuma, Ohta, Kamiya, 2021) — the convolutional spatial gating unit (CSGU);
Branchformer (Peng, Dalmia, Lane, Watanabe, ICML 2022), §3.2, eq. 4–6:

    Z = GELU(X U),   [Z_1, Z_2] = split(Z),   Z̃ = Z_1 ⊙ (DWConv(LN(Z_2)) + b),   Y = Z̃ V

U: d → d_ff, V: d_ff/2 → d, DWConv a depthwise convolution over time of ``kernel`` taps (one
filter per channel). It is gMLP's spatial gating with the n×n token-mixing matrix replaced by a
depthwise convolution, so it takes any length. As in ESPnet's implementation (the authors' code)
the first half of Z is the value and the second half, normalised and convolved, the gate; the
convolution is centred in the bidirectional form (the paper's) and causal — taps only on
t, t−1, …, t−kernel+1 — in the causal form, which decodes with a fixed buffer of the last
kernel − 1 gate inputs (``tevo.nn.fftconv.conv_with_state``). Padded positions enter the
convolution as zeros, so real tokens see exactly the unpadded sequence.

Complexity: O(n d d_ff + n k d_ff) time, O(n d_ff) memory; decoding O(d d_ff + k d_ff) per token.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.context import MixerContext
from ...nn.fftconv import conv_buffer, conv_with_state, direct_conv
from ...registry import MIXERS
from ..base import Mixer, Supports


@MIXERS.register(
    "cgmlp", paper="Branchformer (Peng et al., 2022) §3.2; MLP-based architecture with variable "
                   "length input for ASR (Sakuma et al., 2021): convolutional gating MLP",
    equation="eq. 4-6: Z = GELU(XU); Z̃ = Z₁ ⊙ (DWConv(LN(Z₂)) + b); Y = Z̃V",
    complexity=("O(n d d_ff + n k d_ff)", "O(n d_ff)"),
    test="tests/papers/test_models_branchformer.py::test_cgmlp_equals_a_loop_of_its_equation",
    tiny={"mult": 2, "kernel": 3})
class ConvGatedMLP(Mixer):
    """Channel MLP whose halves gate each other through a depthwise convolution over time."""

    supports = Supports(causal=True, bidirectional=True, cross=False, cache=True,
                        positions=frozenset({"input"}), padding=True, flat_grid=False,
                        text=True)

    def __init__(self, d_model: int, mult: float = 6.0, kernel: int = 31, causal: bool = True):
        super().__init__()
        if isinstance(mult, bool) or not isinstance(mult, (int, float)) or not mult > 0:
            raise ConfigError("mixer(cgmlp).mult", mult, why="d_ff = mult·d_model; must be > 0")
        if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1:
            raise ConfigError("mixer(cgmlp).kernel", kernel, why="an integer >= 1")
        if not causal and kernel % 2 == 0:
            raise ConfigError("mixer(cgmlp).kernel", kernel,
                              why="the bidirectional (centred) convolution needs an odd kernel")
        e = max(1, int(round(float(mult) * d_model / 2)))
        self.e, self.k, self.causal = e, kernel, causal
        self.proj_in = nn.Linear(d_model, 2 * e)                  # U
        self.norm = nn.LayerNorm(e)
        self.conv = nn.Parameter(torch.empty(e, kernel))          # tap j acts j steps back
        self.conv_bias = nn.Parameter(torch.zeros(e))
        self.out_proj = nn.Linear(e, d_model)                     # V
        self.init_weights()

    def init_weights(self) -> None:
        """ESPnet's CSGU init: small conv weights, gate bias 1 (the unit starts near an MLP)."""
        with torch.no_grad():
            nn.init.normal_(self.conv, std=1e-6)
            self.conv_bias.fill_(1.0)

    def init_state(self, batch: int, device=None, dtype=None):
        return {"buf": conv_buffer(batch, self.k, self.e, device, dtype)}

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        n = x.shape[1]
        mask = ctx.query_mask(n)                                  # (B, n) or None
        z1, z2 = F.gelu(self.proj_in(x)).chunk(2, -1)             # (B, n, e) each
        g = self.norm(z2)
        if self.causal:
            if state is not None:
                g, buf = conv_with_state(g, self.conv, state["buf"], mask=mask)
                state = {"buf": buf}
            else:
                g = direct_conv(g, self.conv, mask=mask)
        else:                          # centred: the causal conv of the input shifted by k//2
            h = self.k // 2
            gp = F.pad(g if mask is None else g * mask[..., None].to(g.dtype), (0, 0, 0, h))
            g = direct_conv(gp, self.conv)[:, h:]
        y = self.out_proj(z1 * (g + self.conv_bias))               # (B, n, d)
        return y, state
