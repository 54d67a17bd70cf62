"""Recurrent Memory Transformer: read/write memory tokens passed from segment to segment.

Papers: Recurrent Memory Transformer (Bulatov, Kuratov & Burtsev, 2022), §3, Fig. 1 (decoder
variant); Scaling Transformer to 1M tokens and beyond with RMT (Bulatov et al., 2023).
    H̃^0_τ = [H^mem_τ ∘ H^0_τ ∘ H^mem_τ]        read memory, segment tokens, write memory
    Ō_τ  = Transformer(H̃^0_τ)                   (causal)
    [H^read ∘ H^out_τ ∘ H^write] := Ō_τ,   H^mem_{τ+1} := H^write,   logits = head(H^out_τ)
The same k memory vectors are placed before the segment (every token reads them) and after it
(the write tokens see the whole segment and the memory); the outputs of the write tokens (after
the model's final norm) are the next segment's memory. H^mem_0 is a learned (k, d) parameter.

Back-propagation through time over segments (§3, "BPTT unroll"): one call of ``forward_segment``
on n tokens runs ⌈n / segment⌉ segments in order; with depth D the memory entering segment s of
the call keeps its graph only for the last D segments (s > S − D, the rule of the authors'
``manage_gradients``), so the loss of segment t back-propagates into segments t−1 … t−D+1 and
not beyond; the learned initial memory always keeps its graph. Between calls (training steps)
the memory is stop-gradient, as every memory here. Train with ``data.seq_len`` = D × segment
to unroll D segments per step.

Positions are segment-local (0 … 2k + segment − 1, padding skipped), as RMT runs an unchanged
Transformer on each segment, so any position encoding works and the stream may be unbounded;
``model.max_len`` must cover 2k + segment.

Complexity per segment of s tokens: the model's own cost on s + 2k tokens (softmax:
O((s + 2k)² d) per layer); the state is k·d numbers; BPTT depth D keeps D segments' activations.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import ConfigError, InputError
from ..nn.context import MixerContext
from ..registry import MEMORIES
from .xl import check_wrappable


def _check_int(name: str, v, lo: int = 1, who: str = "rmt") -> None:
    if v is None or isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"model.memory.{name}", v,
                          why=f"{who} needs {name}, an integer >= {lo} (got {v!r})")


def split_segments(n: int, segment: int) -> list[tuple[int, int]]:
    """[start, stop) of the segments a call of n tokens is cut into (the last may be shorter)."""
    return [(s, min(n, s + segment)) for s in range(0, n, segment)]


def keep_rows(keep: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """Per batch row: ``new`` where keep (B,) is True, else ``old`` (a row whose segment was all
    padding keeps its memory)."""
    return torch.where(keep.view(-1, *([1] * (new.dim() - 1))), new, old.to(new.dtype))


@MEMORIES.register(
    "rmt", paper="Recurrent Memory Transformer (Bulatov et al., 2022); Scaling Transformer to 1M "
                 "tokens and beyond with RMT (Bulatov et al., 2023)",
    equation="§3: H̃_τ = [H^mem_τ ∘ H_τ ∘ H^mem_τ]; Ō = Transformer(H̃_τ); "
             "H^mem_{τ+1} = Ō[write]; BPTT over the last D segments",
    complexity=("the model's cost on segment + 2k tokens per segment",
                "O(k·d) state + D segments of activations"),
    test="tests/papers/test_memory_rmt.py::test_bptt_depth_three_reaches_segment_t_minus_2_and_one_does_not",
    tiny={"mem_tokens": 2, "segment": 3, "bptt": 2})
class RecurrentMemory(nn.Module):
    """k memory tokens read at the start of each segment and written at its end; the written
    vectors are the next segment's memory (RMT)."""

    ordered_segments = True
    stream_positions = False          # positions restart every segment

    def __init__(self, mem_tokens: int | None = None, segment: int | None = None, bptt: int = 1,
                 d_model: int | None = None, n_layers: int | None = None):
        super().__init__()
        self._check(mem_tokens, segment, bptt)
        self.mem_tokens, self.segment, self.bptt = int(mem_tokens), int(segment), int(bptt)
        self.d_model, self.n_layers = d_model, n_layers
        self.memory0 = nn.Parameter(torch.randn(self.mem_tokens, d_model) * 0.02)  # H^mem_0

    @staticmethod
    def _check(mem_tokens, segment, bptt) -> None:
        _check_int("mem_tokens", mem_tokens)
        _check_int("segment", segment)
        _check_int("bptt", bptt)

    @classmethod
    def check_config(cls, cfg: ModelConfig, mem_tokens=None, segment=None, bptt: int = 1,
                     **dims) -> None:
        cls._check(mem_tokens, segment, bptt)
        check_wrappable(cfg, "rmt", dims, ["mem_tokens", "segment", "bptt"], recompute_rows=False)
        if cfg.max_len < segment + 2 * mem_tokens:
            raise ConfigError("model.max_len", cfg.max_len,
                              why=f"rmt runs segment + 2·mem_tokens = {segment + 2 * mem_tokens} "
                                  f"tokens at once")

    def init_memory(self, batch: int, device=None, dtype=None) -> dict:
        """The learned initial memory H^mem_0 for every row: (B, k, d), and the real tokens
        seen per row (B,)."""
        return {"mem": self.memory0.detach().to(device=device, dtype=dtype)
                .expand(batch, -1, -1).clone(),
                "seen": torch.zeros(batch, dtype=torch.long, device=device)}

    def forward(self, model: nn.Module, input_ids: Tensor, memory: dict | None = None,
                attention_mask: Tensor | None = None):
        """input_ids (B, n), cut into segments of ``segment`` tokens -> ModelOutput(logits
        (B, n, V), state = the memory after the last segment, detached)."""
        from ..models.common import ModelOutput, check_ids
        check_ids(input_ids, model.cfg.vocab_size)
        B, n = input_ids.shape
        dev = input_ids.device
        if memory is None:
            mem = self.memory0.expand(B, -1, -1)                          # learned, with grad
            seen = torch.zeros(B, dtype=torch.long, device=dev)
        else:
            mem, seen = memory["mem"].to(dev), memory["seen"].to(dev)
            if mem.shape[:2] != (B, self.mem_tokens):
                raise InputError(f"rmt: the memory holds {tuple(mem.shape[:2])} (batch, tokens), "
                                 f"the call has batch {B} and mem_tokens {self.mem_tokens}")
        mask = (torch.ones(B, n, dtype=torch.bool, device=dev) if attention_mask is None
                else attention_mask.to(dev).bool())
        segs = split_segments(n, self.segment)
        k, logits, aux = self.mem_tokens, [], 0.0
        extra_aux: dict = {}
        for s, (a, b) in enumerate(segs):
            if memory is not None or s > 0:
                if s <= len(segs) - self.bptt:                           # outside the BPTT window
                    mem = mem.detach()
            ids, m = input_ids[:, a:b], mask[:, a:b]
            ones = torch.ones(B, k, dtype=torch.bool, device=dev)
            key_mask = torch.cat([ones, m, ones], 1)                      # (B, 2k + s)
            pos = (key_mask.long().cumsum(-1) - 1).clamp(min=0)           # local, pads skipped
            x = model.embed_tokens(ids, pos[:, k:k + ids.shape[1]])       # (B, s, d)
            h = torch.cat([mem.to(x.dtype), x, mem.to(x.dtype)], 1)       # (B, 2k + s, d)
            ctx = MixerContext(causal=True, positions=pos, pos=model.pos,
                               key_padding_mask=None if bool(key_mask.all()) else key_mask)
            h, _ = model.blocks(h, ctx)
            if model.norm is not None:
                h = model.norm(h)
            logits.append(model.head(h[:, k:k + ids.shape[1]]))          # (B, s, V)
            mem = keep_rows(m.any(-1), h[:, -k:], mem)                   # H^mem_{τ+1}
            seen = seen + m.long().sum(-1)
            aux = aux + ctx.aux_loss()
            for name, vals in ctx.aux.items():
                extra_aux.setdefault(name, []).extend(vals)
        state = {"mem": mem.detach(), "seen": seen}
        return ModelOutput(torch.cat(logits, 1), state, aux, None, {"aux": extra_aux})
