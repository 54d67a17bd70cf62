"""AutoCompressor: each segment is compressed into κ summary vectors, and the summaries of all
previous segments are prepended to the next one as a soft prompt.

Paper: Adapting Language Models to Compress Contexts (Chevalier, Wettig, Ajith & Chen, EMNLP
2023), §3 (summary accumulation):
    input of segment i:   [σ_{<i} ∘ S_i ∘ ⟨sum⟩_1..κ]        σ_{<i} = σ_1 ∘ … ∘ σ_{i−1}
    Ō = Transformer(input)  (causal),   logits = head(Ō[S_i]),   σ_i = Ō[⟨sum⟩]  (final hidden)
The ⟨sum⟩ tokens are κ learned embeddings appended after the segment, so they read all of it
(causal attention); their outputs are the segment's summary vectors, which accumulate: every
later segment sees the summaries of all earlier ones (up to ``max_summaries`` vectors, the oldest
dropped first). Training back-propagates through the summaries across the segments of a call
(``bptt``: the summaries of the last D segments keep their graph, the rule of ``rmt``); across
calls (training steps) they are stop-gradient.

Positions are local to a segment (summaries first, padding skipped), as the paper gives the soft
prompt the first position ids, so any position encoding works; ``model.max_len`` must cover
max_summaries + segment + κ. Options: summary (κ ≥ 1), segment (≥ 1), bptt (≥ 1),
max_summaries (≥ κ, default 8κ).

Complexity per segment of s tokens: the model's cost on (m + s + κ) tokens, m ≤ max_summaries
the accumulated summaries; state O(max_summaries · d).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import ConfigError, InputError
from ..nn.context import MixerContext
from ..registry import MEMORIES
from .rmt import split_segments
from .xl import check_wrappable


def _int(name, v, lo):
    if v is None or isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"model.memory.{name}", v,
                          why=f"autocompressor needs {name}, an integer >= {lo} (got {v!r})")


@MEMORIES.register(
    "autocompressor", paper="Adapting Language Models to Compress Contexts (Chevalier et al., "
                            "2023)",
    equation="§3: input_i = [σ_{<i} ∘ S_i ∘ ⟨sum⟩]; σ_i = Ō[⟨sum⟩]; σ_{<i+1} = σ_{<i} ∘ σ_i",
    complexity=("the model's cost on m + segment + κ tokens per segment", "O(max_summaries·d)"),
    test="tests/papers/test_memory_autocompressor.py::"
         "test_summaries_accumulate_and_each_segment_is_the_transformer_on_summaries_segment_sum",
    tiny={"summary": 2, "segment": 3, "bptt": 2, "max_summaries": 32})
class AutoCompressorMemory(nn.Module):
    """κ learned summary tokens after each segment; their outputs accumulate as a soft prompt
    for all later segments (AutoCompressor)."""

    ordered_segments = True
    stream_positions = False

    def __init__(self, summary: int | None = None, segment: int | None = None, bptt: int = 1,
                 max_summaries: int | None = None, d_model: int | None = None,
                 n_layers: int | None = None):
        super().__init__()
        self._check(summary, segment, bptt, max_summaries)
        self.summary, self.segment, self.bptt = int(summary), int(segment), int(bptt)
        self.max_summaries = int(max_summaries or 8 * self.summary)
        self.d_model = d_model
        self.sum_tokens = nn.Parameter(torch.randn(self.summary, d_model) * 0.02)   # ⟨sum⟩

    @staticmethod
    def _check(summary, segment, bptt, max_summaries) -> None:
        _int("summary", summary, 1)
        _int("segment", segment, 1)
        _int("bptt", bptt, 1)
        if max_summaries is not None:
            _int("max_summaries", max_summaries, summary)

    @classmethod
    def check_config(cls, cfg: ModelConfig, summary=None, segment=None, bptt: int = 1,
                     max_summaries=None, **dims) -> None:
        cls._check(summary, segment, bptt, max_summaries)
        check_wrappable(cfg, "autocompressor", dims,
                        ["summary", "segment", "bptt", "max_summaries"], recompute_rows=False)
        need = (max_summaries or 8 * summary) + segment + summary
        if cfg.max_len < need:
            raise ConfigError("model.max_len", cfg.max_len,
                              why=f"autocompressor runs max_summaries + segment + summary = "
                                  f"{need} tokens at once")

    def init_memory(self, batch: int, device=None, dtype=None) -> dict:
        """No summaries yet: (B, 0, d) vectors, their mask (B, 0), real tokens seen (B,)."""
        return {"mem": torch.zeros(batch, 0, self.d_model, device=device, dtype=dtype),
                "mask": torch.zeros(batch, 0, dtype=torch.bool, device=device),
                "seen": torch.zeros(batch, dtype=torch.long, device=device)}

    def forward(self, model: nn.Module, input_ids: Tensor, memory: dict | None = None,
                attention_mask: Tensor | None = None):
        """input_ids (B, n) in segments of ``segment`` -> ModelOutput(logits (B, n, V), state)."""
        from ..models.common import ModelOutput, check_ids
        check_ids(input_ids, model.cfg.vocab_size)
        B, n = input_ids.shape
        dev = input_ids.device
        dtype = model.embed.weight.dtype if hasattr(model.embed, "weight") else None
        if memory is None:
            memory = self.init_memory(B, dev, dtype)
        mem, mmask, seen = (memory["mem"].to(dev), memory["mask"].to(dev),
                            memory["seen"].to(dev))
        if mem.shape[0] != B:
            raise InputError(f"autocompressor: the memory holds batch {mem.shape[0]}, the call "
                             f"has {B}")
        mask = (torch.ones(B, n, dtype=torch.bool, device=dev) if attention_mask is None
                else attention_mask.to(dev).bool())
        segs = split_segments(n, self.segment)
        k, logits, aux = self.summary, [], {}
        for s, (a, b) in enumerate(segs):
            if s <= len(segs) - self.bptt:           # summaries outside the BPTT window: SG
                mem = mem.detach()
            ids, m = input_ids[:, a:b], mask[:, a:b]
            w = ids.shape[1]
            ones = torch.ones(B, k, dtype=torch.bool, device=dev)
            key_mask = torch.cat([mmask, m, ones], 1)                   # (B, m + w + κ)
            pos = (key_mask.long().cumsum(-1) - 1).clamp(min=0)
            M = mem.shape[1]
            x = model.embed_tokens(ids, pos[:, M:M + w])
            h = torch.cat([mem.to(x.dtype), x, self.sum_tokens.to(x.dtype).expand(B, -1, -1)], 1)
            ctx = MixerContext(causal=True, positions=pos, pos=model.pos,
                               key_padding_mask=None if bool(key_mask.all()) else key_mask)
            h, _ = model.blocks(h, ctx)
            if model.norm is not None:
                h = model.norm(h)
            logits.append(model.head(h[:, M:M + w]))
            real = m.any(-1, keepdim=True).expand(B, k)                 # all-pad: masked summary
            mem = torch.cat([mem.to(h.dtype), h[:, -k:]], 1)[:, -self.max_summaries:]
            mmask = torch.cat([mmask, real], 1)[:, -self.max_summaries:]
            seen = seen + m.long().sum(-1)
            for name, vals in ctx.aux.items():
                aux.setdefault(name, []).extend(vals)
        total = sum((v for vals in aux.values() for v in vals), 0.0)
        return ModelOutput(torch.cat(logits, 1), {"mem": mem.detach(), "mask": mmask,
                                                  "seen": seen}, total, None, {"aux": aux})
