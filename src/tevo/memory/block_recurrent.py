"""Block-Recurrent Transformer: a recurrent layer whose state vectors are updated once per block
of W tokens through attention and LSTM-style gates.

Paper: Block-Recurrent Transformers (Hutchins, Schlag, Wu, Dyer & Neyshabur, 2022), §3.
Tokens are read in blocks of W. Every layer uses sliding-window attention over the current and
the previous block (Transformer-XL's cache of one block, W keys back, stop-gradient across
segments). One layer r is recurrent, with S state vectors s (B, S, d):
  vertical (tokens of block b):   x ← x + CrossAttn(LN x → LN(s_b + ids)),  then layer r as usual
  horizontal (state):             h = LN(s_b + ids)
                                  u = W_p [SelfAttn(h) ; CrossAttn(h → LN x_b)]
                                  c = s_b ⊙ f + z ⊙ i,   z = tanh(W_z u + b_z),
                                      i = σ(W_i u + b_i − 1),  f = σ(W_f u + b_f + 1)   (LSTM gate)
                                  s_{b+1} = c ⊙ f' + z' ⊙ i'  with the same gate on MLP(LN c)
``ids`` are learned state IDs (the states' position embeddings); the initial state s_0 is learned.
Within a call the state is back-propagated through every block of it; across calls (training
steps) it is stop-gradient, as the paper truncates at segment boundaries.

Simplifications, said here: the token→state cross-attention is a residual sublayer added before
layer r's own block (the paper runs it beside self-attention and projects the concatenation
with one matrix); the state's keys come from layer r's token input (normalised), as in the
paper's shared keys; gates are the paper's "LSTM" gate (not the "fixed" one).

Complexity: per block and layer O(W · 2W · d) attention (so O(n W d) per segment of n tokens,
linear in n) plus O(S (S + W) d + S d²) for the state update; memory O(L W d + S d) carried.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import ConfigError, InputError
from ..nn.attention import eager_attention
from ..nn.context import MixerContext
from ..registry import MEMORIES
from .rmt import keep_rows, split_segments
from .xl import check_wrappable, segment_positions


def _check_int(name: str, v, lo: int = 0) -> None:
    if v is None or isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"model.memory.{name}", v,
                          why=f"block_recurrent needs {name}, an integer >= {lo} (got {v!r})")


class _Attention(nn.Module):
    """Multi-head attention with its own projections (q from x, k and v from m): x (B, n, d),
    m (B, m, d), key mask (B, m) -> (B, n, d) before the output projection."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        if d % heads:
            raise ConfigError("model.memory.heads", heads,
                              why=f"d_model={d} is not divisible by heads={heads}")
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x: Tensor, m: Tensor, key_mask: Tensor | None = None) -> Tensor:
        B, n, d = x.shape
        sp = lambda t: t.view(B, -1, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        mask = None if key_mask is None else key_mask[:, None, None, :]
        y = eager_attention(sp(self.q(x)), sp(self.k(m)), sp(self.v(m)), mask)   # (B, h, n, e)
        return y.transpose(1, 2).reshape(B, n, d)


class LSTMGate(nn.Module):
    """c' = c ⊙ σ(W_f u + b_f + 1) + tanh(W_z u + b_z) ⊙ σ(W_i u + b_i − 1) (paper §3.2)."""

    def __init__(self, d: int):
        super().__init__()
        self.proj = nn.Linear(d, 3 * d)

    def forward(self, c: Tensor, u: Tensor) -> Tensor:
        z, i, f = self.proj(u).chunk(3, -1)
        return c * torch.sigmoid(f + 1.0) + torch.tanh(z) * torch.sigmoid(i - 1.0)


@MEMORIES.register(
    "block_recurrent", paper="Block-Recurrent Transformers (Hutchins et al., 2022)",
    equation="§3: per block of W tokens, sliding window over 2W keys; recurrent layer: tokens "
             "cross-attend to the state; state ← LSTM-gate(state, W_p[SelfAttn ; CrossAttn])",
    complexity=("O(n·W·d) attention per layer + O(n/W · S (S + W) d) state updates",
                "O(L·W·d + S·d) carried"),
    test="tests/papers/test_memory_block_recurrent.py::"
         "test_state_update_is_the_papers_lstm_gate_over_attention_per_block",
    tiny={"block": 3, "states": 2, "heads": 2})
class BlockRecurrentMemory(nn.Module):
    """Sliding-window (one-block XL cache) layers plus one recurrent layer whose S state vectors
    are updated per block by attention and LSTM-style gates."""

    ordered_segments = True

    def __init__(self, block: int | None = None, states: int | None = None, heads: int = 4,
                 layer: int | None = None, d_model: int | None = None,
                 n_layers: int | None = None):
        super().__init__()
        self._check(block, states, heads, layer, n_layers)
        d = d_model
        self.block, self.states, self.d_model, self.n_layers = int(block), int(states), d, n_layers
        self.layer = (n_layers // 2) if layer is None else int(layer)
        self.state0 = nn.Parameter(torch.randn(self.states, d) * 0.02)      # s_0
        self.state_ids = nn.Parameter(torch.randn(self.states, d) * 0.02)   # learned state IDs
        self.tok_norm, self.state_norm, self.mlp_norm = (nn.LayerNorm(d), nn.LayerNorm(d),
                                                         nn.LayerNorm(d))
        self.read = _Attention(d, heads)                 # vertical: tokens -> state
        self.read_out = nn.Linear(d, d)
        self.self_attn, self.cross_attn = _Attention(d, heads), _Attention(d, heads)
        self.proj = nn.Linear(2 * d, d)                  # W_p [SelfAttn ; CrossAttn]
        self.gate1, self.gate2 = LSTMGate(d), LSTMGate(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    @staticmethod
    def _check(block, states, heads, layer, n_layers) -> None:
        _check_int("block", block, 1)
        _check_int("states", states, 1)
        _check_int("heads", heads, 1)
        if layer is not None:
            _check_int("layer", layer, 0)
            if n_layers is not None and layer >= n_layers:
                raise ConfigError("model.memory.layer", layer,
                                  why=f"the recurrent layer must be one of 0..{n_layers - 1}")

    @classmethod
    def check_config(cls, cfg: ModelConfig, block=None, states=None, heads: int = 4,
                     layer=None, **dims) -> None:
        cls._check(block, states, heads, layer, cfg.n_layers)
        check_wrappable(cfg, "block_recurrent", dims, ["block", "states", "heads", "layer"])

    # -- state ----------------------------------------------------------------------------
    def init_memory(self, batch: int, device=None, dtype=None) -> dict:
        """Empty window cache per layer (B, 0, d) with positions and mask (B, 0), the real
        tokens seen (B,), and the learned initial state s_0 (B, S, d)."""
        L = self.n_layers or 0
        return {"layers": [torch.zeros(batch, 0, self.d_model, device=device, dtype=dtype)
                           for _ in range(L)],
                "positions": torch.zeros(batch, 0, dtype=torch.long, device=device),
                "mask": torch.zeros(batch, 0, dtype=torch.bool, device=device),
                "seen": torch.zeros(batch, dtype=torch.long, device=device),
                "state": self.state0.detach().to(device=device, dtype=dtype)
                .expand(batch, -1, -1).clone()}

    def update_state(self, s: Tensor, x: Tensor, x_mask: Tensor) -> Tensor:
        """Horizontal direction: s (B, S, d), layer r's token input x (B, W, d) with mask
        (B, W) -> the next state (B, S, d)."""
        h = self.state_norm(s + self.state_ids)
        kv = self.tok_norm(x)
        u = self.proj(torch.cat([self.self_attn(h, h), self.cross_attn(h, kv, x_mask)], -1))
        c = self.gate1(s, u)
        return self.gate2(c, self.mlp(self.mlp_norm(c)))

    def read_state(self, x: Tensor, s: Tensor) -> Tensor:
        """Vertical direction: x (B, W, d) + W_o CrossAttn(LN x → LN(s + ids))."""
        return x + self.read_out(self.read(self.tok_norm(x), self.state_norm(s + self.state_ids)))

    # -- forward --------------------------------------------------------------------------
    def forward(self, model: nn.Module, input_ids: Tensor, memory: dict | None = None,
                attention_mask: Tensor | None = None):
        """input_ids (B, n), read in blocks of W -> ModelOutput(logits (B, n, V), state)."""
        from ..models.common import ModelOutput, check_ids
        check_ids(input_ids, model.cfg.vocab_size)
        B, n = input_ids.shape
        dev = input_ids.device
        dtype = model.embed.weight.dtype if hasattr(model.embed, "weight") else None
        fresh = memory is None
        if fresh:
            memory = self.init_memory(B, dev, dtype)
        if len(memory["layers"]) != len(model.blocks) or memory["seen"].shape[0] != B:
            raise InputError(f"block_recurrent: the memory holds {len(memory['layers'])} layers "
                             f"× batch {memory['seen'].shape[0]}, the call has "
                             f"{len(model.blocks)} × {B}")
        mems = [m.to(dev) for m in memory["layers"]]
        m_pos, m_mask, seen = (memory["positions"].to(dev), memory["mask"].to(dev),
                               memory["seen"].to(dev))
        s = self.state0.expand(B, -1, -1) if fresh else memory["state"].to(dev)
        pos_all, mask_all = segment_positions(seen, attention_mask, n, "block_recurrent")
        if mask_all is None:
            mask_all = torch.ones(B, n, dtype=torch.bool, device=dev)
        W, logits, aux = self.block, [], {}
        for a, b in split_segments(n, W):
            pos, mask = pos_all[:, a:b], mask_all[:, a:b]
            key_mask = torch.cat([m_mask, mask], 1)                       # (B, ≤W + w)
            ctx = MixerContext(causal=True, positions=torch.cat([m_pos, pos], 1), pos=model.pos,
                               key_padding_mask=None if bool(key_mask.all()) else key_mask)
            x = model.embed_tokens(input_ids[:, a:b], pos)                # (B, w, d)
            for i, blk in enumerate(model.blocks.blocks):
                ctx.layer, ctx.n_layers = i, len(model.blocks)
                if i == self.layer:
                    x_in = x
                    x = self.read_state(x, s)
                    s = keep_rows(mask.any(-1), self.update_state(s, x_in, mask), s)
                h_tilde = torch.cat([mems[i].detach().to(x.dtype), x], 1)
                y, _ = blk(h_tilde, ctx, None)
                mems[i] = h_tilde[:, -W:].detach()
                x = y[:, -(b - a):]
            m_pos, m_mask = ctx.positions[:, -W:], key_mask[:, -W:]
            if model.norm is not None:
                x = model.norm(x)
            logits.append(model.head(x))
            for k, v in ctx.aux.items():
                aux.setdefault(k, []).extend(v)
        total = sum((v for vals in aux.values() for v in vals), 0.0)
        state = {"layers": mems, "positions": m_pos, "mask": m_mask,
                 "seen": seen + mask_all.long().sum(-1), "state": s.detach()}
        return ModelOutput(torch.cat(logits, 1), state, total, None, {"aux": aux})
