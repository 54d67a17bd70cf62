"""Compressive Transformer: a Transformer-XL memory whose evicted rows are compressed, not dropped.

Paper: Compressive Transformers for Long-Range Sequence Modelling (Rae et al., 2020), §3 and
Algorithm 1. Per layer l, with memory m (n_m rows), compressed memory cm (n_cm rows), rate c:
    h̃ = [SG(cm) ∘ SG(m) ∘ h]                      keys and values of layer l (queries: h)
    old_mem = the oldest rows of [m ∘ h] beyond n_m   (evicted, FIFO)
    new_cm  = f_c(old_mem)  (rows / c),    cm ← last n_cm rows of [cm ∘ new_cm]
    L_attn  = ||attn(h, old_mem) − attn(h, f_c(old_mem))||²₂               (§3.2, Alg. 2)
f_c is a 1D convolution with kernel = stride = c (``conv``, the paper's best), mean or max
pooling with stride c (``mean_pool``, ``max_pool``), or ``most_used``: keep the 1/c of the old
memories that received the most attention (mean over heads and current queries) in the
segment that evicts them, in their original order. The attention-reconstruction loss trains the
compression network only: h, the old memories and the layer's attention weights are
stop-gradient inside it, and the compressed memory is stop-gradient to the main loss (§3.2).

How it runs (as ``xl_memory``, see ``tevo.memory.xl``): each layer is applied causally to
[cm ∘ m ∘ h] and the last n rows are kept; positions continue from the stream, a compressed row
takes the position of the last token it summarises (``most_used``: the kept token's), so
relative encodings see how far back it lies.

Simplifications, said here: attn(·,·) in L_attn is the layer's own multi-head content attention
(W_q, W_k, W_v, no position terms, on the raw hidden states, the heads' outputs before W_o; the paper does not name a
normalisation); L_attn is the mean over real queries and features of the squared difference
(the paper's squared norm up to a constant) summed over layers, scaled by ``recon_weight``; rows
are evicted in multiples of c, so the memory holds between n_m and n_m + c − 1 rows (nothing is
lost when a segment is not a multiple of c); a compressed slot whose c tokens include padding
is masked.

Complexity (per layer and segment of n tokens): O((n_cm + n_m + n)² d) attention (memory rows
recomputed as queries, as in ``xl_memory``), O(n_old d² ) for the convolution and
O(n · n_old · d) for the reconstruction attention; memory O(L (n_m + n_cm) d).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import ConfigError, InputError
from ..nn.context import MixerContext
from ..registry import MEMORIES, MIXERS, split_spec
from ..config import layer_specs
from .xl import check_wrappable, segment_positions

COMPRESSIONS = ("conv", "mean_pool", "max_pool", "most_used")


def _check_int(name: str, v, lo: int = 1) -> None:
    if v is None or isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"model.memory.{name}", v,
                          why=f"compressive needs {name}, an integer >= {lo} (got {v!r})")


@MEMORIES.register(
    "compressive", paper="Compressive Transformers for Long-Range Sequence Modelling "
                         "(Rae et al., 2020)",
    equation="§3: h̃ = [SG(cm) ∘ SG(m) ∘ h]; cm ← [cm ∘ f_c(old_mem)]; "
             "L_attn = ||attn(h, old_mem) − attn(h, f_c(old_mem))||²",
    complexity=("O((n_cm+n_m+n)² d) attention + O(n·n_old·d) reconstruction per layer",
                "O(L·(n_m+n_cm)·d)"),
    test="tests/papers/test_memory_compressive.py::"
         "test_reconstruction_loss_is_the_papers_equation_and_falls_in_training",
    tiny={"mem_len": 4, "cmem_len": 4, "rate": 2})
class CompressiveMemory(nn.Module):
    """Transformer-XL memory plus a compressed memory of the evicted rows (rate c), with the
    attention-reconstruction loss training the compression."""

    ordered_segments = True

    def __init__(self, mem_len: int | None = None, cmem_len: int | None = None,
                 rate: int = 3, compression: str = "conv", recon_weight: float = 1.0,
                 d_model: int | None = None, n_layers: int | None = None):
        super().__init__()
        self._check(mem_len, cmem_len, rate, compression, recon_weight)
        self.mem_len, self.cmem_len, self.rate = int(mem_len), int(cmem_len), int(rate)
        self.compression, self.recon_weight = compression, float(recon_weight)
        self.d_model, self.n_layers = d_model, n_layers
        self.convs = (nn.ModuleList(nn.Conv1d(d_model, d_model, self.rate, stride=self.rate)
                                    for _ in range(n_layers or 0))
                      if compression == "conv" else None)

    @staticmethod
    def _check(mem_len, cmem_len, rate, compression, recon_weight) -> None:
        _check_int("mem_len", mem_len)
        _check_int("cmem_len", cmem_len)
        _check_int("rate", rate)
        if compression not in COMPRESSIONS:
            raise ConfigError("model.memory.compression", compression, list(COMPRESSIONS))
        if (isinstance(recon_weight, bool) or not isinstance(recon_weight, (int, float))
                or not math.isfinite(recon_weight) or recon_weight < 0):
            raise ConfigError("model.memory.recon_weight", recon_weight,
                              why="a finite number >= 0")

    @classmethod
    def check_config(cls, cfg: ModelConfig, mem_len=None, cmem_len=None, rate: int = 3,
                     compression: str = "conv", recon_weight: float = 1.0, **dims) -> None:
        cls._check(mem_len, cmem_len, rate, compression, recon_weight)
        check_wrappable(cfg, "compressive", dims,
                        ["mem_len", "cmem_len", "rate", "compression", "recon_weight"])
        for i, spec in enumerate(layer_specs(cfg)):           # attn(h, ·) needs W_q, W_k, W_v
            mname, _ = split_spec(spec["mixer"], "model.mixer")
            if not hasattr(MIXERS.get(mname).obj, "repeat_kv"):
                ok = [n for n in MIXERS.names() if hasattr(MIXERS.get(n).obj, "repeat_kv")
                      and MIXERS.get(n).supports.cache]
                raise ConfigError("model.mixer", mname, ok,
                                  why="compressive's attention-reconstruction loss uses the "
                                      "layer's multi-head attention projections")

    # -- state ----------------------------------------------------------------------------
    def init_memory(self, batch: int, device=None, dtype=None) -> dict:
        """Empty memory: per layer (B, 0, d) memory and compressed memory, their positions and
        padding masks (B, 0) and the real tokens seen per row (B,)."""
        L = self.n_layers or 0
        z = lambda: torch.zeros(batch, 0, self.d_model, device=device, dtype=dtype)  # noqa: E731
        zl = lambda: torch.zeros(batch, 0, dtype=torch.long, device=device)         # noqa: E731
        zb = lambda: torch.zeros(batch, 0, dtype=torch.bool, device=device)         # noqa: E731
        return {"layers": [z() for _ in range(L)], "positions": zl(), "mask": zb(),
                "comp": [z() for _ in range(L)], "comp_positions": zl(), "comp_mask": zb(),
                "seen": torch.zeros(batch, dtype=torch.long, device=device)}

    # -- compression ----------------------------------------------------------------------
    def compress(self, layer: int, old: Tensor, usage: Tensor | None = None) -> tuple:
        """f_c: old (B, e, d), e a multiple of c -> (compressed (B, e/c, d), index (B, e/c) of
        the token each row stands for, for its position and mask: the last of its group, or
        the kept one for most_used)."""
        B, e, d = old.shape
        c, k = self.rate, e // self.rate
        last = (torch.arange(k, device=old.device) * c + c - 1).expand(B, k)
        if self.compression == "conv":
            return self.convs[layer](old.transpose(1, 2)).transpose(1, 2), last
        if self.compression == "mean_pool":
            return old.view(B, k, c, d).mean(2), last
        if self.compression == "max_pool":
            return old.view(B, k, c, d).amax(2), last
        idx = usage.topk(k, -1).indices.sort(-1).values                 # (B, k) most used
        return old.gather(1, idx[..., None].expand(B, k, d)), idx

    def content_attention(self, mixer: nn.Module, h: Tensor, mem: Tensor, mem_mask: Tensor):
        """attn(h, mem): the layer's multi-head attention with stop-gradient weights and no
        position terms. h (B, n, d), mem (B, m, d), mem_mask (B, m) -> (out (B, n, d),
        weights (B, H, n, m))."""
        det = lambda lin, t: F.linear(t, lin.weight.detach(),                # noqa: E731
                                      None if lin.bias is None else lin.bias.detach())
        q = mixer._split(det(mixer.q_proj, h), mixer.heads)               # (B, H, n, e)
        k = mixer.repeat_kv(mixer._split(det(mixer.k_proj, mem), mixer.kv_heads))
        v = mixer.repeat_kv(mixer._split(det(mixer.v_proj, mem), mixer.kv_heads))
        s = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
        s = s.masked_fill(~mem_mask[:, None, None, :], float("-inf"))
        w = torch.softmax(s, -1).nan_to_num(0.0)                        # (B, H, n, m)
        y = (w @ v.float())                                              # (B, H, n, e)
        return mixer._merge(y).to(h.dtype), w

    def _recon(self, mixer, h: Tensor, mask: Tensor, old: Tensor, old_mask: Tensor,
               comp: Tensor) -> Tensor:
        """L_attn of one layer: mean over real queries (and features) of
        (attn(h, old) − attn(h, f_c(old)))²; only f_c receives a gradient."""
        B = old.shape[0]
        comp_mask = old_mask.view(B, -1, self.rate).all(-1)            # (B, e/c)
        a_old, _ = self.content_attention(mixer, h, old, old_mask)     # (B, n, d)
        a_comp, _ = self.content_attention(mixer, h, comp, comp_mask)
        ok = mask & comp_mask.any(-1, keepdim=True)                     # (B, n)
        sq = ((a_old - a_comp).float() ** 2).mean(-1)
        return (sq * ok).sum() / ok.sum().clamp(min=1)

    # -- forward --------------------------------------------------------------------------
    def forward(self, model: nn.Module, input_ids: Tensor, memory: dict | None = None,
                attention_mask: Tensor | None = None):
        """One segment: input_ids (B, n) -> ModelOutput(logits (B, n, V), state = next memory,
        aux_loss = recon_weight · L_attn while gradients are on)."""
        from ..models.common import ModelOutput, check_ids
        check_ids(input_ids, model.cfg.vocab_size)
        B, n = input_ids.shape
        dev = input_ids.device
        if memory is None:
            memory = self.init_memory(B, dev, model.embed.weight.dtype
                                      if hasattr(model.embed, "weight") else None)
        mems, comps = memory["layers"], memory["comp"]
        if len(mems) != len(model.blocks) or memory["seen"].shape[0] != B:
            raise InputError(f"compressive: the memory holds {len(mems)} layers × batch "
                             f"{memory['seen'].shape[0]}, the call has {len(model.blocks)} × {B}")
        seen = memory["seen"].to(dev)
        pos, mask = segment_positions(seen, attention_mask, n, "compressive")   # (B, n)
        mask = torch.ones(B, n, dtype=torch.bool, device=dev) if mask is None else mask
        m_pos, m_mask = memory["positions"].to(dev), memory["mask"].to(dev)      # (B, n_m)
        c_pos, c_mask = memory["comp_positions"].to(dev), memory["comp_mask"].to(dev)
        key_mask = torch.cat([c_mask, m_mask, mask], 1)                  # (B, n_cm + n_m + n)
        ctx = MixerContext(causal=True, key_padding_mask=None if bool(key_mask.all()) else key_mask,
                           positions=torch.cat([c_pos, m_pos, pos], 1), pos=model.pos)
        # rows evicted from [m ∘ h]: a multiple of c, leaving at least mem_len
        n_m = m_pos.shape[1]
        e = max(0, (n_m + n - self.mem_len) // self.rate * self.rate)
        joined_pos, joined_mask = torch.cat([m_pos, pos], 1), torch.cat([m_mask, mask], 1)
        old_mask = joined_mask[:, :e]                                    # (B, e)
        recon = []
        x = model.embed_tokens(input_ids, pos)                           # (B, n, d)
        new_mems, new_comps, olds, idx, usage = [], [], [], None, None
        for i, blk in enumerate(model.blocks.blocks):
            ctx.layer, ctx.n_layers = i, len(model.blocks)
            h_tilde = torch.cat([comps[i].detach().to(x.dtype), mems[i].detach().to(x.dtype), x], 1)
            y, _ = blk(h_tilde, ctx, None)
            joined = torch.cat([mems[i].detach().to(x.dtype), x.detach()], 1)   # (B, n_m + n, d)
            old = joined[:, :e]
            new_mems.append(joined[:, e:])
            if e:
                mixer = _attention_of(blk)
                h = x.detach()
                if self.compression == "most_used":                  # usage, summed over layers
                    _, w = self.content_attention(mixer, h, old, old_mask)
                    u = (w * mask[:, None, :, None]).sum((1, 2))         # (B, e) real queries
                    usage = u if usage is None else usage + u
                    olds.append(old)
                else:
                    comp, idx = self.compress(i, old)                    # (B, e/c, d)
                    if self.recon_weight > 0 and torch.is_grad_enabled() and self.convs is not None:
                        recon.append(self._recon(mixer, h, mask, old, old_mask, comp))
                    new_comps.append(torch.cat([comps[i].to(x.dtype), comp.detach()], 1)
                                     [:, -self.cmem_len:])
            else:
                new_comps.append(comps[i])
            x = y[:, -n:]
        if e and self.compression == "most_used":                        # one choice for all layers
            usage = usage.masked_fill(~old_mask, -1.0)
            for i, old in enumerate(olds):
                comp, idx = self.compress(i, old, usage)
                new_comps.append(torch.cat([comps[i].to(x.dtype), comp], 1)[:, -self.cmem_len:])
        if e:
            cp = joined_pos[:, :e].gather(1, idx)
            cm = (old_mask.gather(1, idx) if self.compression == "most_used"
                  else old_mask.view(B, -1, self.rate).all(-1))
            c_pos = torch.cat([c_pos, cp], 1)[:, -self.cmem_len:]
            c_mask = torch.cat([c_mask, cm], 1)[:, -self.cmem_len:]
        if recon:
            ctx.add_aux("compressive_recon", torch.stack(recon).sum(), self.recon_weight)
        if model.norm is not None:
            x = model.norm(x)
        logits = model.head(x)
        new_memory = {"layers": new_mems, "positions": joined_pos[:, e:], "mask": joined_mask[:, e:],
                      "comp": new_comps, "comp_positions": c_pos, "comp_mask": c_mask,
                      "seen": seen + mask.long().sum(-1)}
        return ModelOutput(logits, new_memory, ctx.aux_loss(), None, {"aux": ctx.aux})


def _attention_of(blk: nn.Module) -> nn.Module:
    """The block's mixer (sublayer 'a', or the mixer of a parallel 'p' sublayer)."""
    for t, sub in zip(blk.layout, blk.sublayers):
        if t == "a":
            return sub
        if t == "p":
            return sub.mixer
    raise ConfigError("model.layout", " ".join(blk.layout), why="compressive needs a mixer sublayer")
