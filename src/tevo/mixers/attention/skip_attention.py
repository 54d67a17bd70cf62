"""Skip-Attention (SkipAt): later layers reuse an earlier layer's attention output.

Paper: Skip-Attention: Improving Vision Transformers by Paying Less Attention (Venkataramanan
et al., 2024), §3, eq. 4: the self-attention outputs of neighbouring layers are highly
correlated, so layer l skips its attention and approximates it from layer l−1's:
    Z_l^MSA ≈ Φ(Z_{l−1}^MSA),   Φ = FC₂ ∘ DwConv ∘ GELU ∘ FC₁
a cheap parametric function (two linear layers around a depthwise convolution over the tokens;
1-D here, causal in causal models). Reusing layers own no query/key/value projections and
compute no QKᵀ. The attention output travels through ``ctx.carry["skip_attention"]``: computing
layers write it, reusing layers read the latest one. ``reuse`` lists the reusing layers
(default: every odd layer, so each computed attention map serves the next layer).
Decode steps carry the new token's output; the depthwise convolution keeps its last k − 1
inputs, so cached decoding equals the full pass.
Complexity: computing layers O(n² d); reusing layers O(n d² + n k d); memory O(n d) for them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.context import MixerContext
from ...registry import MIXERS
from ..base import Mixer, Supports
from .softmax import SoftmaxAttention

CARRY_KEY = "skip_attention"


@MIXERS.register(
    "skip_attention", paper="Skip-Attention: Improving Vision Transformers by Paying Less "
                            "Attention (Venkataramanan et al., 2024)",
    equation="§3 eq. 4: Z_l^MSA = Φ(Z_{l−1}^MSA), Φ = FC₂(DwConv(GELU(FC₁(·)))) on reusing "
             "layers; computing layers are softmax attention",
    complexity=("O(n² d) computing, O(n d²) reusing", "O(n²) / O(n d)"),
    test="tests/papers/test_attention_skip_attention.py::test_reused_layers_compute_no_qk",
    tiny={"heads": 2})
class SkipAttention(Mixer):
    """Softmax attention on computing layers; a cheap Φ of the previous attention output on others."""

    supports = Supports(causal=True, bidirectional=True, cross=False, cache=True,
                        positions=frozenset({"input", "qk", "bias"}))

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None,
                 bias: bool = True, dropout: float = 0.0, impl: str = "sdpa", kernel: int = 3,
                 reuse: list | None = None, layer: int = 0, n_layers: int = 1):
        super().__init__()
        reuse_set = set(range(1, n_layers, 2)) if reuse is None else {int(r) for r in reuse}
        if 0 in reuse_set:
            raise ConfigError("mixer.reuse", sorted(reuse_set),
                              why="layer 0 has no earlier attention output to reuse")
        if kernel < 1:
            raise ConfigError("mixer.kernel", kernel, why="kernel must be >= 1")
        self.reusing, self.kernel = layer in reuse_set, kernel
        if self.reusing:                                   # Φ: no Q/K/V projections at all
            self.fc1 = nn.Linear(d_model, d_model, bias=bias)
            self.dwconv = nn.Conv1d(d_model, d_model, kernel, groups=d_model, bias=bias)
            self.fc2 = nn.Linear(d_model, d_model, bias=bias)
        else:
            self.attn = SoftmaxAttention(d_model, heads, head_dim=head_dim, bias=bias,
                                         dropout=dropout, impl=impl)

    def init_state(self, batch: int, device=None, dtype=None):
        return {} if self.reusing else self.attn.init_state(batch, device, dtype)

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        if not self.reusing:
            y, state = self.attn(x, ctx, state)
            ctx.carry[CARRY_KEY] = y                       # Z^MSA of this layer
            return y, state
        z = ctx.carry.get(CARRY_KEY)
        if z is None or z.shape != x.shape:
            raise ValueError("skip_attention: a reusing layer needs an earlier computing layer's "
                             "attention output in ctx.carry (is layer 0 a skip_attention layer?)")
        B, n, d = z.shape
        qm = ctx.query_mask(n)
        h = F.gelu(self.fc1(z))
        if qm is not None:
            h = h * qm.unsqueeze(-1).to(h.dtype)            # padding must not enter the conv
        k1, new_state = self.kernel - 1, None
        if ctx.causal:
            tail = state["conv"] if state and "conv" in state else h.new_zeros(B, k1, d)
            hp = torch.cat([tail, h], 1)
            if state is not None:
                new_state = {"conv": hp[:, hp.shape[1] - k1:]}
        else:
            hp = F.pad(h, (0, 0, k1 // 2, k1 - k1 // 2))
        y = self.dwconv(hp.transpose(1, 2)).transpose(1, 2)                # (B, n, d)
        return self.fc2(y), new_state
