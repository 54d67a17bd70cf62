"""RWKV channel mixing: a squared-ReLU FFN on token-shifted inputs, gated by a receptance.

Paper: RWKV: Reinventing RNNs for the Transformer Era (Peng et al., 2023), §3.1.2 eq. 17–19
(the RWKV-4 architecture that transformers' ``RwkvForCausalLM`` implements):

    r'_t = W'_r (μ'_r ⊙ x_t + (1 − μ'_r) ⊙ x_{t−1})
    k'_t = W'_k (μ'_k ⊙ x_t + (1 − μ'_k) ⊙ x_{t−1})
    o'_t = σ(r'_t) ⊙ (W'_v · max(k'_t, 0)²)

x_{t−1} is the previous token's (normalised) input (``tevo.nn.shift.token_shift``), so this FFN
is not position-wise: it carries that one vector as its decoding state (``stateful``), which
the block passes like a mixer's. Complexity: O(n d d_ff) time, O(n d_ff) memory; the state is
O(d) per layer. Initialisation: μ'_k = μ'_r = (i/d)^(1 − l/L) as in the authors' code; the
linear maps keep the model's default init.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..nn.context import MixerContext
from ..nn.shift import token_shift
from ..registry import FFNS


@FFNS.register(
    "rwkv_channel_mix",
    paper="RWKV: Reinventing RNNs for the Transformer Era (Peng et al., 2023)",
    equation="§3.1.2 eq. 17–19: r' = W'_r(μ'_r x_t + (1−μ'_r) x_{t−1}), "
             "k' = W'_k(μ'_k x_t + (1−μ'_k) x_{t−1}), o' = σ(r') ⊙ W'_v max(k', 0)²",
    complexity=("O(n d d_ff)", "O(n d_ff); state O(d)"),
    test="tests/papers/test_rnn_rwkv.py::test_channel_mix_matches_equation_and_carries_shift",
    tiny={"d_ff": 32})
class RWKVChannelMix(nn.Module):
    """RWKV-4 channel mix: token shift + squared-ReLU FFN gated by σ(receptance)."""

    stateful = True          # the previous token's input: y, state = ffn(x, ctx, state)
    uses_ctx = True          # reads the padding mask (padded tokens shift in as zeros)
    position_wise = False    # output at t reads x_{t-1}

    def __init__(self, d_model: int, d_ff: int | None = None, mult: float = 4.0,
                 layer: int = 0, n_layers: int = 1, dropout: float = 0.0):
        super().__init__()
        if d_ff is not None and int(d_ff) < 1:
            raise ConfigError("ffn.d_ff", d_ff, why="must be a positive integer")
        if d_ff is None and not float(mult) > 0:
            raise ConfigError("ffn.mult", mult, why="must be > 0")
        d_ff = int(d_ff) if d_ff is not None else max(1, int(mult * d_model))
        self.d_model, self.d_ff = d_model, d_ff
        self.layer, self.n_layers = layer, max(1, n_layers)
        self.mix_k = nn.Parameter(torch.full((d_model,), 0.5))
        self.mix_r = nn.Parameter(torch.full((d_model,), 0.5))
        self.key = nn.Linear(d_model, d_ff, bias=False)
        self.receptance = nn.Linear(d_model, d_model, bias=False)
        self.out_proj = nn.Linear(d_ff, d_model, bias=False)        # W'_v
        self.drop = nn.Dropout(dropout)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        ratio = 1.0 - self.layer / self.n_layers                     # 1 → ~0 with depth
        ramp = torch.arange(self.d_model, dtype=torch.float32) / self.d_model
        self.mix_k.copy_(ramp.pow(ratio))
        self.mix_r.copy_(ramp.pow(ratio))

    def init_state(self, batch: int, device=None, dtype=None) -> dict:
        return {"shift": None}

    def forward(self, x: Tensor, ctx: MixerContext | None = None, state: dict | None = None):
        """x (B, n, d) → (y (B, n, d), state {"shift": (B, d)} or None)."""
        mask = None if ctx is None else ctx.query_mask(x.shape[1])
        prev = None if state is None else state.get("shift")
        xx, last = token_shift(x, prev, mask)                        # x_{t-1}: (B, n, d)
        k = self.key(x * self.mix_k + xx * (1 - self.mix_k))         # (B, n, d_ff)
        r = self.receptance(x * self.mix_r + xx * (1 - self.mix_r))  # (B, n, d)
        y = torch.sigmoid(r) * self.out_proj(self.drop(torch.relu(k).square()))
        return y, (None if state is None else {"shift": last})
