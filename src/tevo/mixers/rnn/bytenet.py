"""ByteNet: residual blocks of dilated (masked) convolutions.

Paper: Neural Machine Translation in Linear Time (Kalchbrenner, Espeholt, Simonyan, van den Oord,
Graves & Kavukcuoglu, 2016), §3.4–3.6 and Fig. 3 (left: the residual block with ReLUs).

One residual block (the model's residual adds x back; the layer norms are the paper's):
    h = W₁ ReLU(LN(x))                    1×1 conv, 2d → d in the paper (here d_model → hidden)
    h = W_k ⊛_r ReLU(LN(h))               1×k convolution dilated by r, dense over channels,
                                          masked (causal) in the decoder, centred in the encoder
    y = W₂ ReLU(LN(h))                    1×1 conv back to d_model
with dilation r = 2^(layer mod L) for L = log₂(max_dilation) + 1, i.e. 1, 2, 4, …, max_dilation,
then again from 1 (the paper: 1, 2, 4, 8, 16 repeated). With k taps the receptive field of
layers 0..l−1 is 1 + (k−1)(2^l − 1) tokens: it doubles with every layer (§3.4).

The causal convolution's taps are x_t, x_{t−r}, …, x_{t−(k−1)r}; decoding keeps the last
(k−1)·r inputs of that convolution — a fixed-size buffer, O(k r d) — so a step costs O(k d h).
Encoder (bidirectional) taps are centred: x_{t+(j−⌊(k−1)/2⌋)r}. Padding: padded positions are
zeroed before the dilated convolution (a left-padded sequence sees zeros, as before its start).
Simplification: this is ByteNet's block as a token mixer; the source/target stacking of the
encoder under the decoder and dynamic unfolding belong to a sequence-to-sequence model and are not
part of it. Complexity O(n k h² + n d h) time, O(n k h) memory.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.context import MixerContext
from ...registry import MIXERS
from ..base import Mixer, Supports
from .common import causal_taps, empty_taps_buffer, positive, zero_padding


def centred_taps(x: Tensor, k: int, dilation: int) -> Tensor:
    """x (B, n, d) → (B, n, k, d) with taps[:, t, j] = x_{t + (j − c)·dilation}, c = (k−1)//2
    (zeros outside the sequence)."""
    B, n, d = x.shape
    c = (k - 1) // 2
    left, right = c * dilation, (k - 1 - c) * dilation
    full = torch.cat([x.new_zeros(B, left, d), x, x.new_zeros(B, right, d)], 1)
    return torch.stack([full[:, j * dilation:j * dilation + n] for j in range(k)], 2)


@MIXERS.register(
    "bytenet", paper="Neural Machine Translation in Linear Time (Kalchbrenner et al., 2016)",
    equation="Fig. 3: y = W₂ ReLU(LN(W_k ⊛_r ReLU(LN(W₁ ReLU(LN(x))))), dilation "
             "r = 2^(layer mod L): receptive field 1 + (k−1)(2^l − 1)",
    complexity=("O(n k h² + n d h)", "O(n k h); decode O(k r h)"),
    test="tests/papers/test_rnn_bytenet.py::test_receptive_field_doubles_per_layer",
    tiny={"kernel": 2, "max_dilation": 4})
class ByteNetBlock(Mixer):
    """ByteNet residual block: LN-ReLU-1×1, LN-ReLU-dilated 1×k conv, LN-ReLU-1×1."""

    supports = Supports(causal=True, bidirectional=True, cross=False, cache=True,
                        positions=frozenset({"input"}))

    def __init__(self, d_model: int, layer: int = 0, kernel: int = 3, max_dilation: int = 16,
                 hidden: int = 0, causal: bool = True):
        super().__init__()
        self.kernel = positive("mixer.kernel", kernel)
        md = positive("mixer.max_dilation", max_dilation)
        if md & (md - 1):
            raise ConfigError("mixer.max_dilation", max_dilation,
                              why="must be a power of two (1, 2, 4, 8, 16, ...)")
        levels = md.bit_length()                                  # log₂(md) + 1
        self.dilation = 2 ** (int(layer) % levels)
        self.hidden = positive("mixer.hidden", hidden if hidden else max(1, d_model // 2))
        self.causal = bool(causal)
        d, h = int(d_model), self.hidden
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(h), nn.LayerNorm(h)
        self.w1 = nn.Linear(d, h)
        self.conv = nn.Linear(self.kernel * h, h)                 # W_k: k taps, dense
        self.w2 = nn.Linear(h, d)

    @property
    def receptive_field(self) -> int:
        """Tokens this block's convolution spans: 1 + (k − 1)·r."""
        return 1 + (self.kernel - 1) * self.dilation

    def init_state(self, batch: int, device=None, dtype=None) -> dict:
        return {"buf": empty_taps_buffer(batch, self.kernel, self.dilation, self.hidden,
                                         device)}

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        n = x.shape[1]
        mask = ctx.query_mask(n)
        h = self.w1(torch.relu(self.norm1(x)))
        h = zero_padding(torch.relu(self.norm2(h)), mask)         # (B, n, h)
        new_state = None
        if ctx.causal:
            taps, buf = causal_taps(h, self.kernel, self.dilation,
                                    None if state is None else state["buf"])
            new_state = None if state is None else {"buf": buf}
        else:
            taps = centred_taps(h, self.kernel, self.dilation)
        h = self.conv(taps.flatten(2))                            # (B, n, h)
        return self.w2(torch.relu(self.norm3(h))), new_state
