"""GPT-J and Phi ⇄ tevo ``gpt`` with a parallel block (``layout: p``) and partial rotary.

GPT-J (Wang & Komatsuzaki, 2021): x + Attn(LN(x)) + MLP(LN(x)) on one LayerNorm, rotary on the
first ``rotary_dim`` channels in the interleaved layout (pairs (x_2i, x_2i+1)), no attention
biases, an untied head with a bias. Phi (Microsoft, 2023): the same block with the "half"
rotary layout on a fraction of the channels, biases everywhere and grouped K/V heads.
"""
from __future__ import annotations

from torch import Tensor

from ..config import ModelConfig
from .hf import (HFFamily, Weights, activation, block_key, hf_tokens, linear, lm_head, register,
                 require)
from .hf_llama import rope_spec


def _head(c, w: Weights, sd: dict, cfg: ModelConfig) -> None:
    lm_head(c, w, sd, cfg, "the token embeddings")
    if "lm_head.bias" in w:
        sd["head.bias"] = w.take("lm_head.bias")


@register
class GPTJ(HFFamily):
    model_types = ("gptj",)
    prefixes = ("transformer.",)

    def config(self, c) -> dict:
        act = activation(c.model_type, "activation_function", c.activation_function)
        d, heads = c.n_embd, c.n_head
        hd = d // heads
        pos = {"name": "rope", "layout": "interleaved", "base": 10000.0}
        if c.rotary_dim and c.rotary_dim != hd:
            pos["rotary_dim"] = int(c.rotary_dim)
        return {
            "arch": "gpt", "vocab_size": c.vocab_size, "d_model": d, "n_layers": c.n_layer,
            "max_len": c.n_positions, "mixer": {"name": "softmax", "heads": heads, "bias": False},
            "ffn": {"name": "mlp", "d_ff": c.n_inner or 4 * d, "activation": act},
            "norm": {"name": "layernorm", "eps": float(c.layer_norm_epsilon)},
            "residual": "pre_ln", "layout": "p", "position": pos,
            "dropout": float(c.resid_pdrop), "head_bias": True,
            "tie_embeddings": bool(getattr(c, "tie_word_embeddings", False)),
            "pad_id": c.pad_token_id,
            "extra": {"hf": {"model_type": c.model_type, **hf_tokens(c)}},
        }

    def weights(self, c, w: Weights, cfg: ModelConfig) -> dict[str, Tensor]:
        sd = {"embed.weight": w.take("wte.weight")}
        w.drop(r"h\.\d+\.attn\.(bias|masked_bias|embed_positions)")
        for i in range(c.n_layer):
            h, t = f"h.{i}.", block_key(i)
            for a, b in (("q_proj", "q_proj"), ("k_proj", "k_proj"), ("v_proj", "v_proj"),
                         ("out_proj", "o_proj")):
                linear(w, f"{h}attn.{a}", f"{t}sublayers.0.mixer.{b}", sd)
            linear(w, f"{h}mlp.fc_in", f"{t}sublayers.0.ffn.fc1", sd)
            linear(w, f"{h}mlp.fc_out", f"{t}sublayers.0.ffn.fc2", sd)
            linear(w, f"{h}ln_1", f"{t}residuals.0.norm", sd)
        linear(w, "ln_f", "norm", sd)
        _head(c, w, sd, cfg)
        return sd


@register
class Phi(HFFamily):
    model_types = ("phi",)
    prefixes = ("model.",)

    def config(self, c) -> dict:
        require(c, "qk_layernorm", False, default=False)
        act = activation(c.model_type, "hidden_act", c.hidden_act)
        d, heads = c.hidden_size, c.num_attention_heads
        kv = getattr(c, "num_key_value_heads", None) or heads
        mixer = {"name": "softmax", "heads": heads, "bias": True}
        if kv != heads:
            mixer["kv_heads"] = kv
        return {
            "arch": "gpt", "vocab_size": c.vocab_size, "d_model": d,
            "n_layers": c.num_hidden_layers, "max_len": c.max_position_embeddings,
            "mixer": mixer, "ffn": {"name": "mlp", "d_ff": c.intermediate_size, "activation": act},
            "norm": {"name": "layernorm", "eps": float(c.layer_norm_eps)},
            "residual": "pre_ln", "layout": "p", "position": rope_spec(c, d // heads),
            "dropout": float(c.resid_pdrop), "head_bias": True,
            "tie_embeddings": bool(getattr(c, "tie_word_embeddings", False)),
            "pad_id": c.pad_token_id,
            "extra": {"hf": {"model_type": c.model_type, **hf_tokens(c)}},
        }

    def weights(self, c, w: Weights, cfg: ModelConfig) -> dict[str, Tensor]:
        sd = {"embed.weight": w.take("embed_tokens.weight")}
        w.drop(r"rotary_emb\.inv_freq|layers\.\d+\.self_attn\.rotary_emb\.inv_freq")
        for i in range(c.num_hidden_layers):
            h, t = f"layers.{i}.", block_key(i)
            for a, b in (("q_proj", "q_proj"), ("k_proj", "k_proj"), ("v_proj", "v_proj"),
                         ("dense", "o_proj")):
                linear(w, f"{h}self_attn.{a}", f"{t}sublayers.0.mixer.{b}", sd)
            linear(w, f"{h}mlp.fc1", f"{t}sublayers.0.ffn.fc1", sd)
            linear(w, f"{h}mlp.fc2", f"{t}sublayers.0.ffn.fc2", sd)
            linear(w, f"{h}input_layernorm", f"{t}residuals.0.norm", sd)
        linear(w, "final_layernorm", "norm", sd)
        _head(c, w, sd, cfg)
        return sd
