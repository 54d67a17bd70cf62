"""LaMemo: look-ahead memory whose states are refreshed by attending to the context on their
right and interpolated with their old attention, instead of Transformer-XL's frozen states.

Paper: LaMemo: Language Modeling with Look-Ahead Memory (Ji, Zhang, Yang, Hu & Huang, NAACL
2022), §3 (and the authors' ``LaMemoRelPartialLearnableMultiHeadAttn``). Per layer l, memory
rows m (the previous segment's tokens) and current rows x:
    current rows:   a_t = Σ_j softmax_j(s_tj) v_j over [m ∘ x] (causal),  Z_t = logsumexp_j s_tj
    look-ahead:     memory row i attends to the rows on its right up to the first current
                    token (keys k_{i+1} … k_{x_0}): ã_i = softmax(s̃_i·) v,  Z̃_i = logsumexp s̃_i·
    interpolation:  α_i = e^{Z_i} / (e^{Z_i} + e^{Z̃_i}),   m̂_i = α_i a_i^{old} + (1 − α_i) ã_i
where a_i^{old}, Z_i are row i's attention output and log-normaliser from when it was a current
row (kept in the memory), so m̂_i is exactly softmax attention over its left context ∪ its
look-ahead window, computed incrementally. Memory rows then go through the layer (W_o, residual,
FFN) like current rows, and their outputs are the next layer's memory rows: only the layer-0
input (the token embeddings) is cached; deeper memory states are recomputed every segment.
The refreshed memory sees no current token beyond the first, which every current token may see,
so the model stays causal.

Memory = the last ``mem_len`` tokens of the previous segment (the paper's setting: memory length =
segment length), so each memory row is refreshed exactly once. The paper's disentangled relative
positions for the future direction are replaced by the model's own rotary/none encoding (which
is relative in both directions); bias-type encodings are refused. The kNN-free design needs the
layer's multi-head softmax attention (W_q, W_k, W_v, W_o) and pre-LN 'a f' blocks.

Complexity per layer and segment: O((M + n)² d) attention (the look-ahead adds O(M² d)); state
O(M d) embeddings + O(L M d) attention vectors and O(L M H) normalisers.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..config import ModelConfig, layer_specs
from ..errors import ConfigError, InputError
from ..registry import MEMORIES, MIXERS, POSITIONS, RESIDUALS, split_spec
from .xl import _check_mem_len, check_wrappable, segment_positions


@MEMORIES.register(
    "lamemo", paper="LaMemo: Language Modeling with Look-Ahead Memory (Ji et al., 2022)",
    equation="§3: memory row i attends to its right context (look-ahead) and is interpolated "
             "with its old attention: m̂ = α a_old + (1−α) ã, α = e^Z / (e^Z + e^Z̃)",
    complexity=("O((M+n)² d) per layer and segment", "O(M·d + L·M·d) state"),
    test="tests/papers/test_memory_lamemo.py::"
         "test_refreshed_memory_is_attention_over_left_context_and_look_ahead_window",
    tiny={"mem_len": 6})
class LookAheadMemory(nn.Module):
    """Memory states refreshed every segment by look-ahead attention to the right context,
    interpolated with their old attention by the softmax normalisers (LaMemo)."""

    ordered_segments = True

    def __init__(self, mem_len: int | None = None, d_model: int | None = None,
                 n_layers: int | None = None):
        super().__init__()
        _check_mem_len(mem_len)
        self.mem_len, self.d_model, self.n_layers = int(mem_len), d_model, n_layers

    @classmethod
    def check_config(cls, cfg: ModelConfig, mem_len=None, **dims) -> None:
        _check_mem_len(mem_len)
        check_wrappable(cfg, "lamemo", dims, ["mem_len"], recompute_rows=False)
        pname, _ = split_spec(cfg.position, "model.position")
        hooks = set(getattr(POSITIONS.get(pname).obj, "hooks", ()))
        if hooks & {"bias", "value"}:
            ok = [n for n in POSITIONS.names()
                  if not set(getattr(POSITIONS.get(n).obj, "hooks", ())) & {"bias", "value"}]
            raise ConfigError("model.position", pname, ok,
                              why="lamemo's look-ahead attends to the right; score-bias "
                                  "encodings here are defined for the causal direction only")
        for i, spec in enumerate(layer_specs(cfg)):
            mname, _ = split_spec(spec["mixer"], "model.mixer")
            rname, _ = split_spec(spec["residual"], "model.residual")
            if not hasattr(MIXERS.get(mname).obj, "repeat_kv") or spec["layout"].split() != \
                    ["a", "f"] or RESIDUALS.get(rname).obj.__name__ != "PreNormResidual":
                raise ConfigError("model.mixer", mname,
                                  [n for n in MIXERS.names()
                                   if hasattr(MIXERS.get(n).obj, "repeat_kv")],
                                  why="lamemo needs multi-head softmax attention in pre-LN "
                                      "'a f' blocks")

    def init_memory(self, batch: int, device=None, dtype=None) -> dict:
        return {"emb": torch.zeros(batch, 0, self.d_model, device=device, dtype=dtype),
                "positions": torch.zeros(batch, 0, dtype=torch.long, device=device),
                "mask": torch.zeros(batch, 0, dtype=torch.bool, device=device),
                "recur": None, "denom": None,
                "seen": torch.zeros(batch, dtype=torch.long, device=device)}

    def attention(self, mixer, pos_enc, h: Tensor, M: int, positions: Tensor, key_mask: Tensor,
                  recur: Tensor | None, denom: Tensor | None):
        """One layer's attention over rows h (B, M + n, d) (already normalised): returns the
        heads' outputs (B, H, M + n, e) (refreshed memory rows, then current rows), and the
        current rows' outputs and log-normalisers (B, H, n, e), (B, H, n)."""
        B, L, _ = h.shape
        n = L - M
        H, e = mixer.heads, mixer.head_dim
        q = mixer._split(mixer.q_proj(h), H)                              # (B, H, L, e)
        k = mixer.repeat_kv(mixer._split(mixer.k_proj(h), mixer.kv_heads))
        v = mixer.repeat_kv(mixer._split(mixer.v_proj(h), mixer.kv_heads))
        if pos_enc is not None and "qk" in pos_enc.hooks:
            q, k = pos_enc.rotate(q, k, positions, positions)
        scale = mixer.scale if mixer.scale is not None else 1.0 / math.sqrt(e)
        ninf = float("-inf")
        # current rows: causal over [memory ∘ segment]
        s = (q[:, :, M:] @ k.transpose(-1, -2)).float() * scale           # (B, H, n, L)
        allow = (torch.arange(L, device=h.device)[None] <= M + torch.arange(n, device=h.device)[:, None])
        allow = allow[None, None] & key_mask[:, None, None, :]
        s = s.masked_fill(~allow, ninf)
        z_cur = torch.logsumexp(s, -1)                                     # (B, H, n)
        a_cur = (s.softmax(-1).nan_to_num(0.0).to(v.dtype) @ v)           # (B, H, n, e)
        if M == 0:
            return a_cur, a_cur, z_cur
        if recur is None or denom is None:
            raise InputError("lamemo: memory rows without their attention vectors and "
                             "normalisers (a memory from another memory type?)")
        # look-ahead: memory row i -> rows i+1 … M (the memory to its right and x_0)
        s_m = (q[:, :, :M] @ k[:, :, 1:M + 1].transpose(-1, -2)).float() * scale   # (B,H,M,M)
        ahead = torch.triu(torch.ones(M, M, dtype=torch.bool, device=h.device))
        ahead = ahead[None, None] & key_mask[:, None, None, 1:M + 1]
        s_m = s_m.masked_fill(~ahead, ninf)
        z_m = torch.logsumexp(s_m, -1)                                     # (B, H, M)
        a_m = s_m.softmax(-1).nan_to_num(0.0).to(v.dtype) @ v[:, :, 1:M + 1]
        zo = denom.to(z_m)
        both = torch.logaddexp(zo, z_m)
        alpha = torch.exp(zo - both).nan_to_num(1.0)[..., None].to(v.dtype)   # (B, H, M, 1)
        a_mem = alpha * recur.to(v.dtype) + (1 - alpha) * a_m             # interpolation
        return torch.cat([a_mem, a_cur], 2), a_cur, z_cur

    def forward(self, model: nn.Module, input_ids: Tensor, memory: dict | None = None,
                attention_mask: Tensor | None = None):
        """One segment: input_ids (B, n) -> ModelOutput(logits (B, n, V), state)."""
        from ..models.common import ModelOutput, check_ids
        check_ids(input_ids, model.cfg.vocab_size)
        B, n = input_ids.shape
        dev = input_ids.device
        if memory is None:
            memory = self.init_memory(B, dev, model.embed.weight.dtype
                                      if hasattr(model.embed, "weight") else None)
        if memory["seen"].shape[0] != B:
            raise InputError(f"lamemo: the memory holds batch {memory['seen'].shape[0]}, the "
                             f"call has {B}")
        seen = memory["seen"].to(dev)
        pos, mask = segment_positions(seen, attention_mask, n, "lamemo")
        mask = torch.ones(B, n, dtype=torch.bool, device=dev) if mask is None else mask
        m = memory["emb"].to(dev).detach()
        M = m.shape[1]
        positions = torch.cat([memory["positions"].to(dev), pos], 1)       # (B, M + n)
        key_mask = torch.cat([memory["mask"].to(dev), mask], 1)
        x = model.embed_tokens(input_ids, pos)                             # (B, n, d)
        keep = min(self.mem_len, n)
        new_emb = x[:, n - keep:].detach()
        recur, denom = memory["recur"], memory["denom"]
        new_recur, new_denom = [], []
        h = torch.cat([m.to(x.dtype), x], 1)                               # (B, M + n, d)
        for i, blk in enumerate(model.blocks.blocks):
            mixer, ffn = blk.sublayers
            r0, r1 = blk.residuals
            pe = model.pos.for_layer(i) if hasattr(model.pos, "for_layer") else model.pos
            heads, a_cur, z_cur = self.attention(
                mixer, pe, r0.norm(h), M, positions, key_mask,
                None if recur is None else recur[i].to(dev),
                None if denom is None else denom[i].to(dev))
            h = h + r0.drop(mixer.o_proj(mixer._merge(heads)))
            h = h + r1.drop(ffn(r1.norm(h)))
            new_recur.append(a_cur[:, :, n - keep:].detach())
            new_denom.append(z_cur[..., n - keep:].detach())
        x = h[:, M:]
        if model.norm is not None:
            x = model.norm(x)
        logits = model.head(x)
        state = {"emb": new_emb, "positions": pos[:, n - keep:], "mask": mask[:, n - keep:],
                 "recur": new_recur, "denom": new_denom, "seen": seen + mask.long().sum(-1)}
        return ModelOutput(logits, state, 0.0, None, {"aux": {}})
