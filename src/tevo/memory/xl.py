"""Transformer-XL segment-level recurrence with a stop-gradient memory.

Paper: Transformer-XL: Attentive Language Models Beyond a Fixed-Length Context (Dai et al.,
2019), §3.2:
    h̃^{n-1}_{τ+1} = [SG(m^{n-1}_{τ+1}) ∘ h^{n-1}_{τ+1}]
    q^n = h^{n-1}_{τ+1} W_q;   k^n = h̃^{n-1}_{τ+1} W_k,  v^n = h̃^{n-1}_{τ+1} W_v  (current W)
    h^n_{τ+1} = Layer(q^n, k^n, v^n)
    m^{n-1}_{τ+2} = the last M rows of [m^{n-1}_{τ+1} ∘ h^{n-1}_{τ+1}]   (M = mem_len)
SG is stop-gradient, ∘ concatenation along the sequence; every layer n keeps the hidden states
that entered it, so the dependency length grows as O(N·M) with depth N (paper Fig. 2).

How it runs inside tevo's mixer contract, for any causal mixer: layer n is applied to the
concatenation [SG(m^{n-1}) ∘ h^{n-1}] (M + n rows) as one causal call, and only the last n rows
are kept. The rest of the block (norms, residuals, FFN) is position-wise, so those rows are
exactly XL's outputs: a causal mixer lets row i see rows ≤ i, i.e. the memory and the current
segment up to i. "Causal mixer" here means one with an incremental form (``supports.cache``:
row i depends on rows ≤ i only, wherever the input ends); Perceiver AR's latent block, which
moves with the end of the input, is refused. Token positions continue from the memory
(``ctx.positions`` of the memory rows are those they had when they were new), so relative
encodings (``xl_relative``, ``rope``, ``alibi``, ...) see the right distances and absolute ones
the stream position (a learned table then bounds the stream at ``max_len``).

Complexity (per layer and segment, n new tokens, memory M): the memory rows are recomputed as
queries too, so softmax attention costs O((M + n)² d) time and the position-wise parts
O((M + n) d²), against XL's O(n (M + n) d) and O(n d²) when only the new rows are queries;
memory O(N·M·d) for the cache plus the mixer's own O((M + n)²) scores. The result is the same.

Padding: a row may be left-padded (padding only before its first real token, as in cached
decoding); the memory carries its padding mask until those rows leave the window. Padding after
a real token is refused.

Training (paper §3.2 and its experimental setup): the memory only helps if segment τ+1 is the
text right after segment τ, so ``tevo train`` reads the training stream in order when
``model.memory`` is set (the class says so: ``ordered_segments = True``): the stream is cut into
``train.batch_size`` contiguous lanes, each step runs ``forward_segment`` on the next
``data.seq_len`` tokens of every lane, and the stop-gradient memory is carried to the next step
(and saved in checkpoints, so a resumed run continues bit for bit). Validation and ``tevo eval``
read their split the same way, the memory carried from each lane's start, as the paper
evaluates. Gradients stop at the memory, so a step costs one segment's backward while the
forward sees N·M tokens back. See ``tevo.train.segments``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import SUBLAYERS, ModelConfig, layer_specs
from ..errors import ConfigError, InputError
from ..nn.context import MixerContext
from ..registry import FFNS, MEMORIES, MIXERS, MODELS, split_spec


@MEMORIES.register(
    "xl_memory", paper="Transformer-XL: Attentive Language Models Beyond a Fixed-Length Context "
                       "(Dai et al., 2019)",
    equation="§3.2: h̃^{n-1}_τ = [SG(m^{n-1}_τ) ∘ h^{n-1}_τ]; q from h, k, v from h̃; "
             "m_{τ+1} = last mem_len rows of [m_τ ∘ h_τ] per layer",
    complexity=("O((M+n)² d) attention + O((M+n) d²) per layer and segment (memory rows "
                "recomputed as queries)", "O(L·M·d) cache + the mixer's O((M+n)²)"),
    test="tests/papers/test_memory_xl.py::test_segments_with_full_memory_equal_one_long_pass",
    tiny={"mem_len": 8})
class XLMemory(nn.Module):
    """Segment recurrence: each layer also sees the stop-gradient hidden states of the last
    mem_len tokens (Transformer-XL)."""

    # the memory of segment τ serves segment τ+1: the trainer reads the corpus in order
    # (contiguous lanes) and carries the memory across steps instead of sampling windows
    ordered_segments = True

    def __init__(self, mem_len: int | None = None, d_model: int | None = None,
                 n_layers: int | None = None):
        super().__init__()
        _check_mem_len(mem_len)
        self.mem_len, self.d_model, self.n_layers = int(mem_len), d_model, n_layers

    # -- config ---------------------------------------------------------------------------
    @classmethod
    def check_config(cls, cfg: ModelConfig, mem_len: int | None = None, **dims) -> None:
        """One-line errors for the models this memory cannot wrap."""
        _check_mem_len(mem_len)
        check_wrappable(cfg, "xl_memory", dims, ["mem_len"])

    def run_layer(self, i: int, blk: nn.Module, h_tilde: Tensor, ctx: MixerContext,
                  memory: dict, extra: dict) -> Tensor:
        """Layer i on [memory ∘ segment] rows (B, m_i + n, d) -> (B, m_i + n, d). Memories that
        change one layer (memorizing) override it and put their own state in ``extra``."""
        return blk(h_tilde, ctx, None)[0]

    def layer_len(self, layer: int) -> int:
        """How many rows layer ``layer`` keeps as memory (all: mem_len)."""
        return self.mem_len

    # -- state ----------------------------------------------------------------------------
    def init_memory(self, batch: int, device=None, dtype=None) -> dict:
        """Empty memory: per layer (B, 0, d) hidden states, their positions (B, 0), their padding
        mask (None: none padded) and the number of real tokens seen per row (B,)."""
        n_layers = self.n_layers or 0
        return {"layers": [torch.zeros(batch, 0, self.d_model, device=device, dtype=dtype)
                           for _ in range(n_layers)],
                "positions": torch.zeros(batch, 0, dtype=torch.long, device=device),
                "mask": None,
                "seen": torch.zeros(batch, dtype=torch.long, device=device)}

    # -- forward --------------------------------------------------------------------------
    def forward(self, model: nn.Module, input_ids: Tensor, memory: dict | None = None,
                attention_mask: Tensor | None = None):
        """One segment: input_ids (B, n) -> ModelOutput(logits (B, n, V), state = next memory)."""
        from ..models.common import ModelOutput, check_ids
        check_ids(input_ids, model.cfg.vocab_size)
        B, n = input_ids.shape
        dev = input_ids.device
        if memory is None:
            memory = self.init_memory(B, dev, model.embed.weight.dtype
                                      if hasattr(model.embed, "weight") else None)
        mems = memory["layers"]
        if len(mems) != len(model.blocks) or memory["seen"].shape[0] != B:
            raise InputError(f"xl_memory: the memory holds {len(mems)} layers × batch "
                             f"{memory['seen'].shape[0]}, the call has {len(model.blocks)} × {B}")
        seen = memory["seen"].to(dev)                                   # (B,)
        pos, mask = segment_positions(seen, attention_mask, n, "xl_memory")   # (B, n) each
        m = memory["positions"].shape[1]                                # the longest layer memory
        mem_mask = memory["mask"]
        key_mask = None                                                 # (B, m + n)
        if mask is not None or mem_mask is not None:
            ones_m = torch.ones(B, m, dtype=torch.bool, device=dev)
            ones_n = torch.ones(B, n, dtype=torch.bool, device=dev)
            key_mask = torch.cat([ones_m if mem_mask is None else mem_mask.to(dev),
                                  ones_n if mask is None else mask], 1)
            if bool(key_mask.all()):
                key_mask = None
        all_pos = torch.cat([memory["positions"].to(dev), pos], 1)      # (B, m + n)

        x = model.embed_tokens(input_ids, pos)                          # (B, n, d) = h^0
        ctx = MixerContext(causal=True, key_padding_mask=key_mask, positions=all_pos,
                           pos=model.pos)
        new_mems, extra = [], {}
        for i, blk in enumerate(model.blocks.blocks):
            mi = mems[i].shape[1]                   # layers may keep less (sparse_long_memory)
            lctx = ctx if mi == m else ctx.replace(
                positions=all_pos[:, m - mi:],
                key_padding_mask=None if key_mask is None else key_mask[:, m - mi:])
            lctx.layer, lctx.n_layers = i, len(model.blocks)
            h_tilde = torch.cat([mems[i].detach().to(x.dtype), x], 1)   # (B, m_i + n, d)
            y = self.run_layer(i, blk, h_tilde, lctx, memory, extra)    # causal over m_i + n rows
            keep = min(self.layer_len(i), h_tilde.shape[1])
            new_mems.append(h_tilde[:, h_tilde.shape[1] - keep:].detach())   # (B, ≤M_i, d)
            x = y[:, -n:]                                               # (B, n, d) = h^i
        if model.norm is not None:
            x = model.norm(x)
        logits = model.head(x)                                          # (B, n, V)
        M = min(max(self.layer_len(i) for i in range(len(mems))), all_pos.shape[1])
        new_memory = {"layers": new_mems, "positions": all_pos[:, all_pos.shape[1] - M:],
                      "mask": None if key_mask is None else key_mask[:, key_mask.shape[1] - M:],
                      "seen": seen + (n if mask is None else mask.long().sum(-1)), **extra}
        return ModelOutput(logits, new_memory, ctx.aux_loss(), None, {"aux": ctx.aux})


def stream_logits(model: nn.Module, input_ids: Tensor, seg_len: int,
                  attention_mask: Tensor | None = None, memory: dict | None = None):
    """Evaluate a long stream segment by segment with the model's memory: input_ids (B, T) ->
    (logits (B, T, V), final memory). The last segment may be shorter."""
    if seg_len < 1:
        raise ConfigError("seg_len", seg_len, why="must be >= 1")
    outs = []
    for s in range(0, input_ids.shape[1], seg_len):
        am = None if attention_mask is None else attention_mask[:, s:s + seg_len]
        o = model.forward_segment(input_ids[:, s:s + seg_len], memory, attention_mask=am)
        outs.append(o.logits)
        memory = o.state
    return torch.cat(outs, 1), memory


def check_wrappable(cfg: ModelConfig, name: str, dims: dict, options: list,
                    recompute_rows: bool = True) -> None:
    """One-line errors for the models a segment memory cannot wrap: it needs a decoder-only
    causal model (a bidirectional one would let the memory see its future), no cross-attention
    sublayer, and, when the memory rows are recomputed through the blocks (``recompute_rows``),
    mixers with an incremental form and position-wise FFNs. ``dims`` are keyword arguments of
    the spec that the model sets itself (refused); ``options`` the memory's own."""
    if dims:
        raise ConfigError(f"model.memory.{sorted(dims)[0]}", dims[sorted(dims)[0]], options,
                          why="set by the model, not by the memory spec")
    decoders = [n for n in MODELS.names() if _is_decoder_only(MODELS.get(n).obj)]
    if cfg.arch not in decoders:
        raise ConfigError("model.arch", cfg.arch, decoders,
                          why=f"memory {name!r} needs a decoder-only causal model, "
                              f"not arch {cfg.arch!r}")
    if cfg.causal is False:
        raise ConfigError("model.causal", False, [True],
                          why=f"memory {name!r} needs a causal model (future tokens of "
                              f"the memory would leak into it)")
    ok_layouts = sorted(set(SUBLAYERS) - {"c"})
    for i, spec in enumerate(layer_specs(cfg)):
        where = f"model.layers[{i}]" if cfg.layers else "model"
        for t in spec["layout"].split():
            if t not in ok_layouts:
                raise ConfigError(f"{where}.layout", t, ok_layouts,
                                  why=f"memory {name!r} cannot wrap sublayer {t!r} "
                                      f"({SUBLAYERS.get(t, '?')})")
        if not recompute_rows:
            continue
        mname, _ = split_spec(spec["mixer"], f"{where}.mixer")
        sup = MIXERS.get(mname).supports
        if sup is not None and not sup.cache:
            ok = [n for n in MIXERS.names()
                  if MIXERS.get(n).supports.causal and MIXERS.get(n).supports.cache]
            raise ConfigError(f"{where}.mixer", mname, ok,
                              why=f"memory {name!r} needs a causal mixer whose rows do not "
                                  f"depend on where the input ends (an incremental form); "
                                  f"{mname!r} has none")
        if spec["ffn"] is None:
            continue
        fname, _ = split_spec(spec["ffn"], f"{where}.ffn")
        if not getattr(FFNS.get(fname).obj, "position_wise", True):
            ok = [n for n in FFNS.names() if getattr(FFNS.get(n).obj, "position_wise", True)]
            raise ConfigError(f"{where}.ffn", fname, ok,
                              why=f"memory {name!r} recomputes the memory rows through "
                                  f"the block; ffn {fname!r} is not position-wise, so they "
                                  f"would change the new rows")


def segment_positions(seen: Tensor, attention_mask: Tensor | None, n: int, name: str):
    """Stream positions of a segment's tokens and its padding mask: seen (B,) real tokens read
    before; attention_mask (B, n) or None. Left padding only (before a row's first real token,
    counting the earlier segments): anything else is an InputError. Returns pos (B, n), mask
    (B, n) bool or None."""
    dev = seen.device
    mask = None if attention_mask is None else attention_mask.to(dev).bool()
    if mask is not None:
        after_real = (seen > 0)[:, None] | (mask.long().cumsum(-1) > 0)
        first = torch.cat([seen[:, None] > 0, after_real[:, :-1]], 1)
        if bool((first & ~mask).any()):
            raise InputError(f"{name}: a row is padded after a real token; only left "
                             f"padding (before a row's first real token) is supported")
        pos = (seen[:, None] + mask.long().cumsum(-1) - 1).clamp(min=0)
    else:
        pos = seen[:, None] + torch.arange(n, device=dev)
    return pos, mask


def _check_mem_len(mem_len) -> None:
    if mem_len is None or isinstance(mem_len, bool) or not isinstance(mem_len, int) or mem_len < 1:
        raise ConfigError("model.memory.mem_len", mem_len,
                          why=f"xl_memory needs mem_len, a positive integer (got {mem_len!r})")


def _is_decoder_only(cls) -> bool:
    return (getattr(cls, "default_causal", False) and not getattr(cls, "has_decoder", False)
            and hasattr(cls, "forward_segment"))
