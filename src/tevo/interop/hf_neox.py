"""GPT-NeoX, BLOOM and Falcon ⇄ tevo ``gpt``: fused QKV projections, parallel blocks, ALiBi.

- Fused ``query_key_value`` weights are split into tevo's q/k/v projections: per head
  [q, k, v] (NeoX, BLOOM, Falcon without MQA), [q heads | k | v] (Falcon multi-query), or per
  K/V group [q_1..q_r, k, v] (Falcon's new decoder architecture).
- Parallel attention + MLP on one LayerNorm (Falcon-7B, ``parallel_attn``) is tevo's ``p``
  layout. GPT-NeoX (``use_parallel_residual``) and Falcon's new architecture normalise the two
  branches with two LayerNorms: LN_1(x) and LN_2(x) share x̂ = (x − μ)/σ and differ only in
  their affine maps, so the converter folds each affine map into the linear layers that read it
  — W(x̂ ⊙ γ + β) + b = (W diag γ) x̂ + (W β + b) — and gives the ``p`` block's one LayerNorm the
  identity map (γ = 1, β = 0). Same function, exactly; the folded q/k/v and fc1 get biases.
- BLOOM's ALiBi adds slope·(key position) with positions counted over real tokens; per query
  row that differs from tevo's −slope·|i − j| (j ≤ i) by a constant, which softmax ignores.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..config import ModelConfig
from .hf import (HFFamily, UnsupportedHFOption, Weights, activation, block_key, hf_tokens,
                 lm_head, register, require)
from .hf_llama import rope_spec


def split_fused(W: Tensor, b: Tensor | None, heads: int, kv: int, hd: int, layout: str):
    """Fused QKV (rows) → ((Wq, bq), (Wk, bk), (Wv, bv)) as tevo nn.Linear weights."""
    d_in = W.shape[1]

    def parts(t, cols):
        if layout == "per_head":                                 # (h, 3, e, ...)
            t = t.reshape(heads, 3, hd, *cols)
            return [t[:, j].reshape(heads * hd, *cols) for j in range(3)]
        if layout == "multi_query":                              # (h + 2, e, ...)
            t = t.reshape(heads + 2, hd, *cols)
            return [t[:heads].reshape(heads * hd, *cols), t[heads], t[heads + 1]]
        if layout == "grouped":                                  # (G, h/G + 2, e, ...)
            r = heads // kv
            t = t.reshape(kv, r + 2, hd, *cols)
            return [t[:, :r].reshape(heads * hd, *cols), t[:, r].reshape(kv * hd, *cols),
                    t[:, r + 1].reshape(kv * hd, *cols)]
        raise ValueError(layout)
    ws = parts(W, (d_in,))
    bs = parts(b, ()) if b is not None else [None] * 3
    return list(zip(ws, bs))


def fold_affine(W: Tensor, b: Tensor | None, gamma: Tensor, beta: Tensor | None):
    """W(x̂ ⊙ γ + β) + b = (W diag γ) x̂ + (W β + b)."""
    W2 = W * gamma[None, :]
    b2 = torch.zeros(W.shape[0], dtype=W.dtype) if b is None else b.clone()
    if beta is not None:
        b2 = b2 + W @ beta
    return W2, b2


def _lin(sd: dict, key: str, W: Tensor, b: Tensor | None) -> None:
    sd[f"{key}.weight"] = W
    if b is not None:
        sd[f"{key}.bias"] = b


class FusedDecoder(HFFamily):
    """Shared conversion of a decoder with fused QKV; subclasses describe their layer."""

    prefixes = ("transformer.",)

    # filled by ``describe``: per-layer HF names and the block shape
    def layer_names(self, c, i: int) -> dict:
        raise NotImplementedError

    def layout(self, c) -> str:                       # "a f", "p" or "p2" (two norms, folded)
        raise NotImplementedError

    def qkv_layout(self, c) -> str:
        return "per_head"

    def heads(self, c) -> tuple[int, int, int]:
        raise NotImplementedError

    def layer_weights(self, c, w: Weights, i: int, sd: dict) -> None:
        n = self.layer_names(c, i)
        t = block_key(i)
        heads, kv, hd = self.heads(c)
        lay = self.layout(c)
        qkv = split_fused(w.take(f"{n['qkv']}.weight"), w.get(f"{n['qkv']}.bias"), heads, kv, hd,
                          self.qkv_layout(c))
        fc1_W, fc1_b = w.take(f"{n['fc1']}.weight"), w.get(f"{n['fc1']}.bias")
        if lay == "p2":                                  # fold the two LayerNorms' affine maps
            g1, b1 = w.take(f"{n['norm1']}.weight"), w.get(f"{n['norm1']}.bias")
            g2, b2 = w.take(f"{n['norm2']}.weight"), w.get(f"{n['norm2']}.bias")
            qkv = [fold_affine(W, b, g1, b1) for W, b in qkv]
            fc1_W, fc1_b = fold_affine(fc1_W, fc1_b, g2, b2)
            sd[f"{t}residuals.0.norm.weight"] = torch.ones_like(g1)
            if b1 is not None:
                sd[f"{t}residuals.0.norm.bias"] = torch.zeros_like(g1)
        if lay == "a f":
            att, ffn = f"{t}sublayers.0.", f"{t}sublayers.1."
            for j, key in ((0, "norm1"), (1, "norm2")):
                sd[f"{t}residuals.{j}.norm.weight"] = w.take(f"{n[key]}.weight")
                if f"{n[key]}.bias" in w:
                    sd[f"{t}residuals.{j}.norm.bias"] = w.take(f"{n[key]}.bias")
        else:
            att, ffn = f"{t}sublayers.0.mixer.", f"{t}sublayers.0.ffn."
            if lay == "p":
                sd[f"{t}residuals.0.norm.weight"] = w.take(f"{n['norm1']}.weight")
                if f"{n['norm1']}.bias" in w:
                    sd[f"{t}residuals.0.norm.bias"] = w.take(f"{n['norm1']}.bias")
        for (W, b), p in zip(qkv, ("q_proj", "k_proj", "v_proj")):
            _lin(sd, f"{att}{p}", W, b)
        _lin(sd, f"{att}o_proj", w.take(f"{n['dense']}.weight"), w.get(f"{n['dense']}.bias"))
        _lin(sd, f"{ffn}fc1", fc1_W, fc1_b)
        fc2_W, fc2_b = w.take(f"{n['fc2']}.weight"), w.get(f"{n['fc2']}.bias")
        if lay == "p2" and fc2_b is None:
            fc2_b = torch.zeros(fc2_W.shape[0], dtype=fc2_W.dtype)
        _lin(sd, f"{ffn}fc2", fc2_W, fc2_b)

    def base_config(self, c, d, n_layers, heads, kv, hd, qkv_bias, out_bias, ffn_bias, d_ff,
                    act, eps, position, tie, max_len, dropout, embedding_norm=False) -> dict:
        if self.layout(c) == "p2":
            qkv_bias, ffn_bias = True, True     # folded LayerNorm biases (fc2: a zero bias)
        lay = self.layout(c)
        mixer = {"name": "softmax", "heads": heads, "bias": qkv_bias}
        if kv != heads:
            mixer["kv_heads"] = kv
        if out_bias != qkv_bias:
            mixer["out_bias"] = out_bias
        return {
            "arch": "gpt", "vocab_size": c.vocab_size, "d_model": d, "n_layers": n_layers,
            "max_len": max_len, "mixer": mixer,
            "ffn": {"name": "mlp", "d_ff": d_ff, "activation": act, "bias": ffn_bias},
            "norm": {"name": "layernorm", "eps": float(eps)}, "residual": "pre_ln",
            "layout": "a f" if lay == "a f" else "p", "position": position,
            "embedding_norm": embedding_norm, "dropout": float(dropout or 0.0),
            "tie_embeddings": bool(tie), "pad_id": c.pad_token_id,
            "extra": {"hf": {"model_type": c.model_type, **hf_tokens(c)}},
        }


@register
class GPTNeoX(FusedDecoder):
    model_types = ("gpt_neox",)
    prefixes = ("gpt_neox.",)

    def layout(self, c):
        return "p2" if getattr(c, "use_parallel_residual", True) else "a f"

    def heads(self, c):
        h = c.num_attention_heads
        return h, h, c.hidden_size // h

    def layer_names(self, c, i):
        p = f"layers.{i}."
        return {"qkv": f"{p}attention.query_key_value", "dense": f"{p}attention.dense",
                "fc1": f"{p}mlp.dense_h_to_4h", "fc2": f"{p}mlp.dense_4h_to_h",
                "norm1": f"{p}input_layernorm", "norm2": f"{p}post_attention_layernorm"}

    def config(self, c) -> dict:
        require(c, "is_decoder", lambda v: True, default=False)
        act = activation(c.model_type, "hidden_act", c.hidden_act)
        heads, kv, hd = self.heads(c)
        bias = bool(getattr(c, "attention_bias", True))
        return self.base_config(
            c, c.hidden_size, c.num_hidden_layers, heads, kv, hd, bias, bias, True,
            c.intermediate_size, act, c.layer_norm_eps, rope_spec(c, hd),
            getattr(c, "tie_word_embeddings", False), c.max_position_embeddings,
            getattr(c, "hidden_dropout", 0.0))

    def weights(self, c, w: Weights, cfg: ModelConfig) -> dict[str, Tensor]:
        sd = {"embed.weight": w.take("embed_in.weight")}
        w.drop(r"layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)|"
               r"rotary_emb\.inv_freq")
        for i in range(c.num_hidden_layers):
            self.layer_weights(c, w, i, sd)
        sd["norm.weight"] = w.take("final_layer_norm.weight")
        sd["norm.bias"] = w.take("final_layer_norm.bias")
        if "embed_out.weight" in w:                      # the name before transformers 5
            w.sd["lm_head.weight"] = w.sd.pop("embed_out.weight")
        _tied_head(c, w, sd, cfg)
        return sd


@register
class BLOOM(FusedDecoder):
    model_types = ("bloom",)

    def layout(self, c):
        return "a f"

    def heads(self, c):
        h = c.n_head
        return h, h, c.hidden_size // h

    def layer_names(self, c, i):
        p = f"h.{i}."
        return {"qkv": f"{p}self_attention.query_key_value", "dense": f"{p}self_attention.dense",
                "fc1": f"{p}mlp.dense_h_to_4h", "fc2": f"{p}mlp.dense_4h_to_h",
                "norm1": f"{p}input_layernorm", "norm2": f"{p}post_attention_layernorm"}

    def config(self, c) -> dict:
        require(c, "apply_residual_connection_post_layernorm", False,
                why="the residual would start from the normalised input")
        heads, kv, hd = self.heads(c)
        return self.base_config(
            c, c.hidden_size, c.n_layer, heads, kv, hd, True, True, True, 4 * c.hidden_size,
            "gelu_tanh", c.layer_norm_epsilon, {"name": "alibi", "heads": heads, "max_bias": 8.0},
            getattr(c, "tie_word_embeddings", True), _bloom_max_len(c),
            getattr(c, "hidden_dropout", 0.0), embedding_norm=True)

    def weights(self, c, w: Weights, cfg: ModelConfig) -> dict[str, Tensor]:
        sd = {"embed.weight": w.take("word_embeddings.weight"),
              "emb_norm.weight": w.take("word_embeddings_layernorm.weight"),
              "emb_norm.bias": w.take("word_embeddings_layernorm.bias")}
        for i in range(c.n_layer):
            self.layer_weights(c, w, i, sd)
        sd["norm.weight"] = w.take("ln_f.weight")
        sd["norm.bias"] = w.take("ln_f.bias")
        _tied_head(c, w, sd, cfg)
        return sd


def _bloom_max_len(c) -> int:
    # ALiBi has no table: any length works; keep a generous default for generation limits
    return int(getattr(c, "seq_length", None) or getattr(c, "max_position_embeddings", 0)
               or 2048)


def _tied_head(c, w: Weights, sd: dict, cfg: ModelConfig) -> None:
    lm_head(c, w, sd, cfg, "the word embeddings")


@register
class Falcon(FusedDecoder):
    model_types = ("falcon",)

    def layout(self, c):
        if c.new_decoder_architecture:
            n_ln = getattr(c, "num_ln_in_parallel_attn", None) or 2
            return "p2" if n_ln == 2 else "p"
        return "p" if c.parallel_attn else "a f"

    def qkv_layout(self, c):
        if c.new_decoder_architecture:
            return "grouped"
        return "multi_query" if c.multi_query else "per_head"

    def heads(self, c):
        h = c.num_attention_heads
        if c.new_decoder_architecture:
            kv = c.num_kv_heads
        else:
            kv = 1 if c.multi_query else h
        return h, kv, c.hidden_size // h

    def layer_names(self, c, i):
        p = f"h.{i}."
        names = {"qkv": f"{p}self_attention.query_key_value", "dense": f"{p}self_attention.dense",
                 "fc1": f"{p}mlp.dense_h_to_4h", "fc2": f"{p}mlp.dense_4h_to_h",
                 "norm1": f"{p}input_layernorm", "norm2": f"{p}post_attention_layernorm"}
        if self.layout(c) == "p2":
            names.update(norm1=f"{p}ln_attn", norm2=f"{p}ln_mlp")
        return names

    def config(self, c) -> dict:
        if c.alibi:
            raise UnsupportedHFOption(c.model_type, "alibi", True,
                                      why="Falcon scales its ALiBi bias by 1/√head_dim and "
                                          "rounds it to bf16; tevo's alibi does neither")
        act = activation(c.model_type, "activation", c.activation)
        heads, kv, hd = self.heads(c)
        bias = bool(c.bias)
        d_ff = getattr(c, "ffn_hidden_size", None) or 4 * c.hidden_size
        return self.base_config(
            c, c.hidden_size, c.num_hidden_layers, heads, kv, hd, bias, bias, bias, d_ff, act,
            c.layer_norm_epsilon, rope_spec(c, hd), getattr(c, "tie_word_embeddings", True),
            c.max_position_embeddings, getattr(c, "hidden_dropout", 0.0))

    def weights(self, c, w: Weights, cfg: ModelConfig) -> dict[str, Tensor]:
        sd = {"embed.weight": w.take("word_embeddings.weight")}
        w.drop(r"rotary_emb\.inv_freq|h\.\d+\.self_attention\.rotary_emb\.inv_freq")
        for i in range(c.num_hidden_layers):
            self.layer_weights(c, w, i, sd)
        sd["norm.weight"] = w.take("ln_f.weight")
        sd["norm.bias"] = w.take("ln_f.bias")
        _tied_head(c, w, sd, cfg)
        return sd
