"""Memformer: a fixed-size external dynamic memory that every layer reads by cross-attention and
a memory writer updates after each segment.

Paper: Memformer: A Memory-Augmented Transformer for Sequence Modeling (Wu, Lan, Gu & Yu,
AACL-IJCNLP 2022), §3.1–3.2:
    reader (every layer l):   h ← h + CrossAttn_l(LN h → M_t)          (slots as keys/values)
    writer (after the last layer, per slot i; slots do not attend to each other):
        a_i = softmax([q_i·k(m_i)/√e + b_f,i ;  q_i·k(H_j)/√e  for j in the segment])
        m'_i = a_i,0 · v(m_i) + Σ_j a_i,j · v(H_j),      q_i = W_q m_i
        M_{t+1} = LayerNorm(m' ) (memory normalisation)
b_f is the forgetting bias of each slot's attention to itself (how much it keeps); M_0 is
learned. Reading the memory of earlier segments only, the model stays causal.

Here the encoder of the paper is the causal LM itself (the reader is a residual cross-attention
sublayer before each block); a call of n tokens runs ⌈n / segment⌉ segments, back-propagating
through the memory of the last ``bptt`` of them (the paper's memory replay back-propagation
computes the same gradient through all segments with less memory; truncation is the
simplification said here); across calls (training steps) the memory is stop-gradient.
Options: slots (≥ 1), segment (≥ 1), bptt (≥ 1), heads (divides d_model, default 4).

Complexity per segment of s tokens: the model's own cost + O(L s k d) for the readers +
O(k s d) for the writer; state k·d.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import ConfigError, InputError
from ..nn.context import MixerContext
from ..registry import MEMORIES
from .block_recurrent import _Attention
from .rmt import keep_rows, split_segments
from .xl import check_wrappable, segment_positions


def _int(name, v, lo=1):
    if v is None or isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"model.memory.{name}", v,
                          why=f"memformer needs {name}, an integer >= {lo} (got {v!r})")


class MemoryWriter(nn.Module):
    """Slot-wise attention over [own slot ; segment] with a forgetting bias, then LayerNorm."""

    def __init__(self, d: int, slots: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.forget_bias = nn.Parameter(torch.full((slots,), 1.0))
        self.norm = nn.LayerNorm(d)

    def forward(self, m: Tensor, h: Tensor, h_mask: Tensor) -> Tensor:
        """m (B, k, d), h (B, s, d), h_mask (B, s) -> M_{t+1} (B, k, d)."""
        B, k, d = m.shape
        H, e = self.heads, d // self.heads
        sp = lambda t: t.view(B, -1, H, e).transpose(1, 2)                  # noqa: E731
        q, km, vm, kh, vh = sp(self.q(m)), sp(self.k(m)), sp(self.v(m)), sp(self.k(h)), sp(self.v(h))
        self_s = (q * km).sum(-1, keepdim=True) / math.sqrt(e) \
            + self.forget_bias[None, None, :, None]                        # (B, H, k, 1)
        tok_s = (q @ kh.transpose(-1, -2) / math.sqrt(e)).masked_fill(
            ~h_mask[:, None, None, :], float("-inf"))                       # (B, H, k, s)
        a = torch.cat([self_s, tok_s], -1).float().softmax(-1).to(q.dtype)
        out = a[..., :1] * vm + a[..., 1:] @ vh                             # (B, H, k, e)
        return self.norm(self.o(out.transpose(1, 2).reshape(B, k, d)))


@MEMORIES.register(
    "memformer", paper="Memformer: A Memory-Augmented Transformer for Sequence Modeling (Wu et "
                       "al., 2022)",
    equation="§3: h ← h + CrossAttn(h → M_t) in every layer; m'_i = Attn(q_i, [m_i ; H]) with a "
             "forgetting bias on the self score; M_{t+1} = LN(M')",
    complexity=("the model's cost + O(L·s·k·d) reads + O(k·s·d) write per segment", "O(k·d)"),
    test="tests/papers/test_memory_memformer.py::"
         "test_writer_is_slot_wise_attention_with_forgetting_bias_and_every_layer_reads",
    tiny={"slots": 3, "segment": 3, "bptt": 2, "heads": 2})
class MemformerMemory(nn.Module):
    """k memory slots read by cross-attention in every layer and rewritten after each segment
    by slot-wise attention with a forgetting bias (Memformer)."""

    ordered_segments = True

    def __init__(self, slots: int | None = None, segment: int | None = None, bptt: int = 1,
                 heads: int = 4, d_model: int | None = None, n_layers: int | None = None):
        super().__init__()
        self._check(slots, segment, bptt, heads, d_model)
        self.slots, self.segment, self.bptt = int(slots), int(segment), int(bptt)
        self.d_model, self.n_layers = d_model, n_layers
        d = d_model
        self.memory0 = nn.Parameter(torch.randn(self.slots, d) * 0.02)        # M_0
        self.read_norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(n_layers or 0))
        self.readers = nn.ModuleList(_Attention(d, heads) for _ in range(n_layers or 0))
        self.read_outs = nn.ModuleList(nn.Linear(d, d) for _ in range(n_layers or 0))
        self.writer = MemoryWriter(d, self.slots, heads)

    @staticmethod
    def _check(slots, segment, bptt, heads, d_model) -> None:
        _int("slots", slots)
        _int("segment", segment)
        _int("bptt", bptt)
        _int("heads", heads)
        if d_model and d_model % heads:
            raise ConfigError("model.memory.heads", heads,
                              why=f"d_model={d_model} is not divisible by heads={heads}")

    @classmethod
    def check_config(cls, cfg: ModelConfig, slots=None, segment=None, bptt: int = 1,
                     heads: int = 4, **dims) -> None:
        cls._check(slots, segment, bptt, heads, cfg.d_model)
        check_wrappable(cfg, "memformer", dims, ["slots", "segment", "bptt", "heads"],
                        recompute_rows=False)

    def init_memory(self, batch: int, device=None, dtype=None) -> dict:
        return {"mem": self.memory0.detach().to(device=device, dtype=dtype)
                .expand(batch, -1, -1).clone(),
                "seen": torch.zeros(batch, dtype=torch.long, device=device)}

    def forward(self, model: nn.Module, input_ids: Tensor, memory: dict | None = None,
                attention_mask: Tensor | None = None):
        """input_ids (B, n) in segments -> ModelOutput(logits (B, n, V), state = next memory)."""
        from ..models.common import ModelOutput, check_ids
        check_ids(input_ids, model.cfg.vocab_size)
        B, n = input_ids.shape
        dev = input_ids.device
        if memory is None:
            mem, seen = self.memory0.expand(B, -1, -1), torch.zeros(B, dtype=torch.long, device=dev)
        else:
            mem, seen = memory["mem"].to(dev), memory["seen"].to(dev)
            if mem.shape[:2] != (B, self.slots):
                raise InputError(f"memformer: the memory holds {tuple(mem.shape[:2])} (batch, "
                                 f"slots), the call has batch {B} and {self.slots} slots")
        pos_all, mask_all = segment_positions(seen, attention_mask, n, "memformer")
        if mask_all is None:
            mask_all = torch.ones(B, n, dtype=torch.bool, device=dev)
        segs = split_segments(n, self.segment)
        logits, aux = [], {}
        for s, (a, b) in enumerate(segs):
            if (memory is not None or s > 0) and s <= len(segs) - self.bptt:
                mem = mem.detach()
            pos, m = pos_all[:, a:b], mask_all[:, a:b]
            x = model.embed_tokens(input_ids[:, a:b], pos)
            ctx = MixerContext(causal=True, positions=pos, pos=model.pos,
                               key_padding_mask=None if bool(m.all()) else m)
            mx = mem.to(x.dtype)
            for i, blk in enumerate(model.blocks.blocks):
                ctx.layer, ctx.n_layers = i, len(model.blocks)
                x = x + self.read_outs[i](self.readers[i](self.read_norms[i](x), mx))   # reader
                x, _ = blk(x, ctx, None)
            h = x
            if model.norm is not None:
                x = model.norm(x)
            logits.append(model.head(x))
            mem = keep_rows(m.any(-1), self.writer(mx, h, m), mem)                    # writer
            for name, vals in ctx.aux.items():
                aux.setdefault(name, []).extend(vals)
        total = sum((v for vals in aux.values() for v in vals), 0.0)
        return ModelOutput(torch.cat(logits, 1), {"mem": mem.detach(),
                                                  "seen": seen + mask_all.long().sum(-1)},
                           total, None, {"aux": aux})
