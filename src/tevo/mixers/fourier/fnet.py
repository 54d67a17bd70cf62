"""FNet: token mixing by the real part of a 2D discrete Fourier transform.

Paper: FNet: Mixing Tokens with Fourier Transforms (Lee-Thorp et al., 2021), eq. 3:
    y = Re(F_seq(F_hidden(x)))
No parameters. Complexity: O(n d log(n d)) time, O(n d) memory. Bidirectional only (every
output depends on every token), and padding changes the transform length, so padded batches
are not invariant: the paper trains on fixed-length packed inputs.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ...nn.context import MixerContext
from ...registry import MIXERS
from ..base import Mixer, Supports


@MIXERS.register(
    "fnet", paper="FNet: Mixing Tokens with Fourier Transforms (Lee-Thorp et al., 2021)",
    equation="eq. 3: y = Re(F_seq(F_h(x)))", complexity=("O(n d log(n d))", "O(n d)"),
    test="tests/papers/test_fourier_fnet.py::test_fnet_matches_torch_fft_reference")
class FNetMixer(Mixer):
    """Parameter-free 2D FFT mixing (real part)."""

    supports = Supports(causal=False, bidirectional=True, cross=False, cache=False,
                        positions=frozenset({"input"}), padding=False)

    def __init__(self, d_model: int | None = None):
        super().__init__()

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        # FFT in fp32 (CPU FFT has no bf16 kernel; fp32 also keeps the sums accurate)
        y = torch.fft.fft2(x.float(), dim=(-2, -1)).real        # (B, n, d)
        return y.to(x.dtype), state
