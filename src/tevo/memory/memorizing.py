"""Memorizing Transformer: one layer attends also to the k nearest (key, value) pairs of an
external memory of everything it saw before, through a learned gate.

Paper: Memorizing Transformers (Wu, Rabe, Hutchins & Szegedy, ICLR 2022), §3:
    local:    V_c = softmax(q K_cᵀ/√e + positions) V_c   over a Transformer-XL window (the
              current segment and a cache of the previous mem_len tokens), causal
    memory:   (K_m, V_m) = the top-k of the external memory for q (kNN on normalised keys),
              V_m = softmax(s · q̂ K̂_mᵀ) V_m                    (s: a learned per-head scale)
    combined: V_a = V_m ⊙ g + V_c ⊙ (1 − g),   g = σ(b_g)       (a learned scalar per head)
    after each segment its (k̂, v) pairs are appended to the memory (FIFO, mem_size per head);
    the memory is not differentiable (no gradient into stored keys and values).
Queries and keys are L2-normalised for retrieval and the memory attention (the paper normalises
them to keep old keys comparable as the model trains). The search is a real k-NN index
(``tevo.nn.knn``: faiss exact inner-product by default, exact torch when faiss is absent), one per
batch row and head, over the stored keys; the current segment is added only after it, so no token
retrieves itself or a later one.

The other layers (and the local part of the kNN layer) are Transformer-XL with ``mem_len``
(``tevo.memory.xl``), as in the paper. The kNN layer's mixer must be a multi-head softmax
attention (its W_q, W_k, W_v, W_o are used). Options: mem_len (XL cache, ≥ 1), mem_size (≥ 1,
entries per head), k (≥ 1), layer (the kNN layer, default the last), backend (auto | faiss |
torch).

Complexity per segment of n tokens at the kNN layer: the local O((M + n)² d) plus the search
O((M + n) · mem_size · e) per head (exact) and O((M + n) k e) attention; memory
O(mem_size · d) per row plus the XL cache.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig, layer_specs
from ..errors import ConfigError
from ..nn.context import MixerContext
from ..nn.knn import BACKENDS, KNNIndex
from ..nn.masks import attention_mask
from ..registry import MEMORIES, MIXERS, split_spec
from .xl import XLMemory, _check_mem_len, check_wrappable


def _check(mem_size, k, layer, backend, n_layers) -> None:
    for name, v in (("mem_size", mem_size), ("k", k)):
        if v is None or isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"model.memory.{name}", v, why="an integer >= 1")
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int)
                              or not 0 <= layer < (n_layers or layer + 1)):
        raise ConfigError("model.memory.layer", layer,
                          why=f"a layer index in 0..{(n_layers or 1) - 1}")
    if backend not in BACKENDS:
        raise ConfigError("model.memory.backend", backend, list(BACKENDS))


def knn_search(keys: Tensor, valid: Tensor, queries: Tensor, k: int, backend: str):
    """Per (row, head): the k stored keys with the largest inner product with each query.
    keys (B, H, M, e), valid (B, M), queries (B, H, L, e) -> ids (B, H, L, k') into M, and a
    mask (B, H, L, k') of real hits (k' = min(k, M); rows with fewer real entries are padded)."""
    B, H, M, e = keys.shape
    L = queries.shape[2]
    kk = min(k, M)
    ids = torch.zeros(B, H, L, kk, dtype=torch.long)
    hit = torch.zeros(B, H, L, kk, dtype=torch.bool)
    for b in range(B):
        real = valid[b].nonzero().flatten().cpu()
        if len(real) == 0:
            continue
        for h in range(H):
            index = KNNIndex(e, "flat", "ip", backend, field="model.memory")
            index.add(keys[b, h, real])
            _, i = index.search(queries[b, h], kk)                      # (L, ≤kk)
            ids[b, h, :, :i.shape[1]] = real[i]
            hit[b, h, :, :i.shape[1]] = True
    return ids.to(keys.device), hit.to(keys.device)


@MEMORIES.register(
    "memorizing", paper="Memorizing Transformers (Wu et al., 2022)",
    equation="§3: V_a = V_m ⊙ g + V_c ⊙ (1 − g); V_m = attention over the top-k (key, value) "
             "of an external memory (kNN on normalised keys); V_c = XL local attention",
    complexity=("O((M+n)² d) local + O((M+n)·mem_size·e) exact search per head and segment",
                "O(mem_size·d) per row + XL cache"),
    test="tests/papers/test_memory_memorizing.py::"
         "test_memory_attention_equals_an_exact_knn_reference",
    tiny={"mem_len": 4, "mem_size": 16, "k": 3})
class MemorizingMemory(XLMemory):
    """Transformer-XL plus, in one layer, kNN retrieval from an external (key, value) memory of
    past segments, fused with local attention by a learned gate."""

    def __init__(self, mem_len: int | None = None, mem_size: int | None = None, k: int = 32,
                 layer: int | None = None, backend: str = "auto", d_model: int | None = None,
                 n_layers: int | None = None):
        _check(mem_size, k, layer, backend, n_layers)
        super().__init__(mem_len, d_model, n_layers)
        self.mem_size, self.k, self.backend = int(mem_size), int(k), backend
        self.layer = (n_layers or 1) - 1 if layer is None else int(layer)
        self.gate = None                       # built on first use: one per head
        self.log_scale = None

    @classmethod
    def check_config(cls, cfg: ModelConfig, mem_len=None, mem_size=None, k: int = 32,
                     layer=None, backend: str = "auto", **dims) -> None:
        _check_mem_len(mem_len)
        _check(mem_size, k, layer, backend, cfg.n_layers)
        check_wrappable(cfg, "memorizing", dims,
                        ["mem_len", "mem_size", "k", "layer", "backend"])
        r = cfg.n_layers - 1 if layer is None else layer
        spec = layer_specs(cfg)[r]
        mname, mkw = split_spec(spec["mixer"], "model.mixer")
        if not hasattr(MIXERS.get(mname).obj, "repeat_kv") or spec["layout"].split() != ["a", "f"]:
            ok = [n for n in MIXERS.names() if hasattr(MIXERS.get(n).obj, "repeat_kv")]
            raise ConfigError("model.mixer", mname, ok,
                              why="memorizing's kNN layer needs multi-head softmax attention "
                                  "(its W_q, W_k, W_v) in an 'a f' block")

    def _params(self, heads: int, head_dim: int, device) -> None:
        if self.gate is None:                  # normally done by bind() at build time
            # b_g = 0: g = 1/2; scale s = √e·(init) on normalised q̂·k̂ ∈ [−1, 1]
            self.gate = nn.Parameter(torch.zeros(heads, device=device))
            self.log_scale = nn.Parameter(torch.full((heads,), math.log(math.sqrt(head_dim) * 2),
                                                     device=device))

    def bind(self, model: nn.Module) -> None:
        """Create the per-head gate and scale from the kNN layer's mixer (called at build)."""
        mixer = model.blocks.blocks[self.layer].sublayers[0]
        self._params(mixer.heads, mixer.head_dim, next(model.parameters()).device)

    # -- the kNN layer --------------------------------------------------------------------
    def knn_attention(self, mixer: nn.Module, h: Tensor, ctx: MixerContext, memory: dict,
                      new: dict, n: int) -> Tensor:
        """The kNN layer's attention sublayer: h (B, L, d) normalised rows [cache ∘ segment]
        -> (B, L, d); records the segment's (k̂, v) in ``new``."""
        B, L, _ = h.shape
        H, e = mixer.heads, mixer.head_dim
        q = mixer._split(mixer.q_proj(h), H)                            # (B, H, L, e)
        k = mixer.repeat_kv(mixer._split(mixer.k_proj(h), mixer.kv_heads))
        v = mixer.repeat_kv(mixer._split(mixer.v_proj(h), mixer.kv_heads))
        pos = ctx.pos.for_layer(ctx.layer) if hasattr(ctx.pos, "for_layer") else ctx.pos
        p = ctx.positions
        qr, kr = (pos.rotate(q, k, p, p) if pos is not None and "qk" in pos.hooks else (q, k))
        bias = pos.bias(qr, kr, p, p) if pos is not None and "bias" in pos.hooks else None
        mask = attention_mask(L, L, True, ctx.key_padding_mask, h.device)
        v_c = mixer.attend(qr, kr, v, mask, bias, ctx)                  # (B, H, L, e) local
        qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        keys, vals, valid = memory["knn_keys"], memory["knn_values"], memory["knn_mask"]
        if keys is None or keys.shape[2] == 0:
            v_a = v_c
        else:
            keys, vals = keys.to(h.device, h.dtype), vals.to(h.device, h.dtype)
            ids, hit = knn_search(keys, valid.to(h.device), qn.detach(), self.k, self.backend)
            idx = ids[..., None].expand(*ids.shape, e)                  # (B, H, L, k, e)
            km = keys[:, :, None].expand(B, H, L, -1, e).gather(3, idx)
            vm = vals[:, :, None].expand(B, H, L, -1, e).gather(3, idx)
            s = torch.einsum("bhle,bhlke->bhlk", qn, km) * self.log_scale.exp()[None, :, None, None]
            w = s.float().masked_fill(~hit, float("-inf")).softmax(-1).nan_to_num(0.0)
            v_m = torch.einsum("bhlk,bhlke->bhle", w.to(vm.dtype), vm)  # (B, H, L, e)
            g = torch.sigmoid(self.gate).to(v_c.dtype)[None, :, None, None]
            has = hit.any(-1, keepdim=True)                             # rows with a memory
            v_a = torch.where(has, v_m * g + v_c * (1 - g), v_c)
        qm = ctx.query_mask(n)
        new["knn_keys"] = kn[:, :, -n:].detach()                        # (B, H, n, e)
        new["knn_values"] = v[:, :, -n:].detach()
        new["knn_new_mask"] = (torch.ones(B, n, dtype=torch.bool, device=h.device)
                               if qm is None else qm.bool())
        return mixer.o_proj(mixer._merge(v_a))

    def run_layer(self, i, blk, h_tilde, ctx, memory, extra):
        if i != self.layer:
            return blk(h_tilde, ctx, None)[0]
        mixer = blk.sublayers[0]
        self._params(mixer.heads, mixer.head_dim, h_tilde.device)
        n = self._n
        new: dict = {}
        x = blk.residuals[0](h_tilde, lambda h: self.knn_attention(mixer, h, ctx, memory, new, n),
                             block_input=h_tilde)
        ffn = blk.sublayers[1]
        x = blk.residuals[1](x, (lambda h: ffn(h, ctx)) if getattr(ffn, "uses_ctx", False) else ffn,
                             block_input=h_tilde)
        keys, vals, valid = memory["knn_keys"], memory["knn_values"], memory["knn_mask"]
        B = h_tilde.shape[0]
        if keys is None:
            keys, vals = new["knn_keys"][:, :, :0], new["knn_values"][:, :, :0]
            valid = torch.zeros(B, 0, dtype=torch.bool, device=h_tilde.device)
        keys = torch.cat([keys.to(h_tilde.device, h_tilde.dtype), new["knn_keys"]], 2)
        vals = torch.cat([vals.to(h_tilde.device, h_tilde.dtype), new["knn_values"]], 2)
        valid = torch.cat([valid.to(h_tilde.device), new["knn_new_mask"]], 1)
        extra.update(knn_keys=keys[:, :, -self.mem_size:], knn_values=vals[:, :, -self.mem_size:],
                     knn_mask=valid[:, -self.mem_size:])
        return x

    def init_memory(self, batch: int, device=None, dtype=None) -> dict:
        """XL's empty memory plus an empty external store (built at the first segment)."""
        return {**super().init_memory(batch, device, dtype), "mask": None,
                "knn_keys": None, "knn_values": None, "knn_mask": None}

    def forward(self, model, input_ids, memory=None, attention_mask=None):
        if memory is None:
            memory = self.init_memory(input_ids.shape[0], input_ids.device,
                                      model.embed.weight.dtype if hasattr(model.embed, "weight")
                                      else None)
        self._n = input_ids.shape[1]
        return super().forward(model, input_ids, memory, attention_mask)
