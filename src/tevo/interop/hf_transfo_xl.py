"""Transformer-XL (Hugging Face ``TransfoXLLMHeadModel``, transformers ≤ 4.37.2) → tevo ``gpt``
with the ``xl_memory`` segment memory and per-layer ``xl_relative`` positions.

Paper: Transformer-XL: Attentive Language Models Beyond a Fixed-Length Context (Dai et al.,
2019). The HF model (a port of the reference code) is mapped piece by piece:
- attention: fused ``qkv_net`` (no bias) split into q, k, v; ``o_net`` (no bias); scores
  (A_ij)/√d_head with A^rel of §3.3 (``xl_relative``); each layer has its own ``r_net`` (W_R)
  and, with ``untie_r``, its own r_w_bias / r_r_bias (u, v) → ``per_layer_r`` / ``per_layer_uv``;
  ``clamp_len`` → the same option; ``same_length`` (every query sees the last mem_len keys) →
  the ``local`` mixer with a sliding window of mem_len;
- blocks: post-LN (``pre_lnorm=False``: LN(x + f(x))) or pre-LN without a final norm;
  ReLU position-wise FFN with biases;
- memory: each layer's input for the last ``mem_len`` tokens, stop-gradient → ``xl_memory``;
- embeddings: ``AdaptiveEmbedding`` with one cluster (``cutoffs=[]``, ``div_val=1``) is a table
  (times its projection when d_embed ≠ d_model) scaled by √d_model; tevo's table holds the
  product, so the head is untied: ``ProjectedAdaptiveLogSoftmax`` with one cluster is
  log_softmax(h P W^T + b), i.e. tevo's ``head`` with weight W Pᵀ and a bias.
HF returns log-probabilities; tevo returns logits (equal after ``log_softmax``).
HF's ``mems=None`` starts from mem_len zero vectors that the first segment attends to; the
reference code starts from an empty memory, which is what ``forward_segment(ids, None)`` does
(pass ``mems=[torch.zeros(0, B, d)] * n_layer`` to HF for the same numbers).
Complexity: a weight copy, O(parameters).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..config import ModelConfig
from .hf import ConversionError, HFFamily, Weights, block_key, hf_tokens, linear, register, require


@register
class TransfoXL(HFFamily):
    model_types = ("transfo-xl",)
    prefixes = ("transformer.",)

    def config(self, c) -> dict:
        require(c, "attn_type", 0, why="only the relative attention of the paper (type 0)")
        require(c, "sample_softmax", lambda v: v is None or v <= 0, "-1")
        require(c, "cutoffs", lambda v: not list(v or []), "[]",
                why="adaptive-softmax clusters are not a plain softmax; only one cluster converts")
        require(c, "div_val", 1, why="adaptive input embeddings of several widths")
        mem_len = int(c.mem_len or 0)
        same = bool(getattr(c, "same_length", False))
        if same and mem_len < 1:
            require(c, "same_length", False, why="same_length needs mem_len >= 1")
        heads, e = int(c.n_head), int(c.d_head)
        mixer = {"name": "softmax", "heads": heads, "head_dim": e, "bias": False}
        if same:                          # query i sees keys i - mem_len + 1 .. i
            mixer = {"name": "local", "window": mem_len, "heads": heads, "head_dim": e,
                     "bias": False}
        position = {"name": "xl_relative", "per_layer_r": True,
                    "per_layer_uv": bool(c.untie_r)}
        if c.clamp_len and c.clamp_len > 0:
            position["clamp_len"] = int(c.clamp_len)
        return {
            "arch": "gpt", "vocab_size": c.vocab_size, "d_model": c.d_model,
            "n_layers": c.n_layer, "max_len": max(mem_len, int(c.clamp_len or 0), 1),
            "mixer": mixer, "position": position,
            "ffn": {"name": "mlp", "d_ff": c.d_inner, "activation": "relu"},
            "norm": {"name": "layernorm", "eps": c.layer_norm_epsilon},
            "residual": "pre_ln" if c.pre_lnorm else "post_ln", "final_norm": False,
            "dropout": float(c.dropout), "tie_embeddings": False, "head_bias": True,
            "memory": {"name": "xl_memory", "mem_len": mem_len} if mem_len > 0 else None,
            "extra": {"hf": {"model_type": c.model_type, **hf_tokens(c)}},
        }

    def weights(self, c, w: Weights, cfg: ModelConfig) -> dict[str, Tensor]:
        d, L = c.d_model, c.n_layer
        table = w.take("word_emb.emb_layers.0.weight")                   # (V, d_embed)
        proj = w.get("word_emb.emb_projs.0")                             # (d, d_embed) or None
        if proj is not None:
            table = table @ proj.t()
        sd = {"embed.weight": table * math.sqrt(d)}                     # emb_scale = √d_model
        if c.untie_r:
            u = [w.take(f"layers.{i}.dec_attn.r_w_bias") for i in range(L)]
            v = [w.take(f"layers.{i}.dec_attn.r_r_bias") for i in range(L)]
            sd["pos.u"], sd["pos.v"] = torch.stack(u), torch.stack(v)   # (L, h, e)
        else:
            sd["pos.u"], sd["pos.v"] = w.take("r_w_bias"), w.take("r_r_bias")
            for i in range(L):                                          # the same Parameter
                for name, shared in (("r_w_bias", sd["pos.u"]), ("r_r_bias", sd["pos.v"])):
                    own = w.get(f"layers.{i}.dec_attn.{name}")
                    if own is not None and not own.equal(shared):
                        raise ConversionError(f"transfo-xl: untie_r=False but layer {i}'s "
                                              f"{name} differs from the shared one")
        he = c.n_head * c.d_head
        for i in range(L):
            h, t = f"layers.{i}.", block_key(i)
            qkv = w.take(f"{h}dec_attn.qkv_net.weight")                 # (3·h·e, d): [q | k | v]
            for j, part in enumerate(("q_proj", "k_proj", "v_proj")):
                sd[f"{t}sublayers.0.{part}.weight"] = qkv[j * he:(j + 1) * he]
            sd[f"{t}sublayers.0.o_proj.weight"] = w.take(f"{h}dec_attn.o_net.weight")
            sd[f"pos.r_net.{i}.weight"] = w.take(f"{h}dec_attn.r_net.weight")
            linear(w, f"{h}dec_attn.layer_norm", f"{t}residuals.0.norm", sd)
            linear(w, f"{h}pos_ff.CoreNet.0", f"{t}sublayers.1.fc1", sd)
            linear(w, f"{h}pos_ff.CoreNet.3", f"{t}sublayers.1.fc2", sd)
            linear(w, f"{h}pos_ff.layer_norm", f"{t}residuals.1.norm", sd)
        out = w.take("crit.out_layers.0.weight")                         # (V, d_embed)
        out_proj = w.get("crit.out_projs.0")                             # (d, d_embed) or None
        sd["head.weight"] = out if out_proj is None else out @ out_proj.t()
        sd["head.bias"] = w.take("crit.out_layers.0.bias")
        w.drop(r"pos_emb\.inv_freq")                                     # the sinusoid's buffer
        return sd
