"""GPT-2 and OpenAI GPT (GPT-1) ⇄ tevo ``gpt``.

GPT-2: pre-LN blocks with a final LayerNorm, learned positions, tanh-GELU MLP, tied head.
GPT-1: post-LN blocks, no final norm. Both store their projections as ``Conv1D`` (y = x W + b,
W of shape (in, out)): the transpose of ``nn.Linear``'s (out, in), and the attention's q, k, v
are one fused ``c_attn`` whose columns are [q | k | v].
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..config import ModelConfig
from ..registry import split_spec
from .hf import (ACTIVATIONS_BACK, HFFamily, Weights, activation, block_key, exported_tokens,
                 hf_tokens, linear, plain_stack_problems, register, require)


def conv1d_qkv(w: Weights, name: str, d: int) -> dict[str, Tensor]:
    """Fused Conv1D ``c_attn`` (d, 3d) → q/k/v nn.Linear weights (d, d) and biases."""
    W = w.take(f"{name}.weight").t()                        # (3d, d) as nn.Linear
    b = w.get(f"{name}.bias")
    out = {}
    for j, part in enumerate(("q_proj", "k_proj", "v_proj")):
        out[f"{part}.weight"] = W[j * d:(j + 1) * d]
        if b is not None:
            out[f"{part}.bias"] = b[j * d:(j + 1) * d]
    return out


def conv1d(w: Weights, name: str, tevo_name: str) -> dict[str, Tensor]:
    out = {f"{tevo_name}.weight": w.take(f"{name}.weight").t()}
    if f"{name}.bias" in w:
        out[f"{tevo_name}.bias"] = w.take(f"{name}.bias")
    return out


def _gpt_block(w: Weights, i: int, d: int, names: tuple[str, str]) -> dict[str, Tensor]:
    """One GPT-1/2 block: attention (sublayer 0), MLP (sublayer 1) and the two LayerNorms
    named ``names`` (residual 0 and 1)."""
    h, t = f"h.{i}.", block_key(i)
    sd = {f"{t}sublayers.0.{k}": v for k, v in conv1d_qkv(w, f"{h}attn.c_attn", d).items()}
    sd.update(conv1d(w, f"{h}attn.c_proj", f"{t}sublayers.0.o_proj"))
    sd.update(conv1d(w, f"{h}mlp.c_fc", f"{t}sublayers.1.fc1"))
    sd.update(conv1d(w, f"{h}mlp.c_proj", f"{t}sublayers.1.fc2"))
    linear(w, f"{h}{names[0]}", f"{t}residuals.0.norm", sd)
    linear(w, f"{h}{names[1]}", f"{t}residuals.1.norm", sd)
    w.drop(rf"h\.{i}\.attn\.(bias|masked_bias)")              # causal-mask buffers (old files)
    return sd


def _head(c, w: Weights, sd: dict, embed_key: str) -> None:
    tied = bool(getattr(c, "tie_word_embeddings", True))
    if tied:
        lm = w.get("lm_head.weight")
        if lm is not None and not torch.equal(lm, w.sd[embed_key]):
            raise_untied(c)
    else:
        sd["head.weight"] = w.take("lm_head.weight")


def raise_untied(c):
    from .hf import ConversionError
    raise ConversionError(f"{c.model_type}: tie_word_embeddings=True but lm_head.weight differs "
                          f"from the token embeddings")


@register
class GPT2(HFFamily):
    model_types = ("gpt2",)
    prefixes = ("transformer.",)
    hf_class = "GPT2LMHeadModel"

    def config(self, c) -> dict:
        require(c, "add_cross_attention", False)
        act = activation(c.model_type, "activation_function", c.activation_function)
        d, heads = c.n_embd, c.n_head
        mixer = {"name": "softmax", "heads": heads, "bias": True}
        if not getattr(c, "scale_attn_weights", True):
            mixer["scale"] = 1.0
        layers = {}
        if getattr(c, "scale_attn_by_inverse_layer_idx", False):
            base = mixer.get("scale", 1.0 / math.sqrt(d // heads))
            layers = {str(i): {"mixer": dict(mixer, scale=base / (i + 1))}
                      for i in range(c.n_layer)}
        return {
            "arch": "gpt", "vocab_size": c.vocab_size, "d_model": d, "n_layers": c.n_layer,
            "max_len": c.n_positions, "mixer": mixer, "layers": layers,
            "ffn": {"name": "mlp", "d_ff": c.n_inner or 4 * d, "activation": act},
            "norm": {"name": "layernorm", "eps": c.layer_norm_epsilon}, "residual": "pre_ln",
            "position": {"name": "learned", "max_len": c.n_positions},
            "dropout": float(c.resid_pdrop),
            "tie_embeddings": bool(getattr(c, "tie_word_embeddings", True)),
            "pad_id": c.pad_token_id, "extra": {"hf": {"model_type": c.model_type,
                                                      **hf_tokens(c)}},
        }

    def weights(self, c, w: Weights, cfg: ModelConfig) -> dict[str, Tensor]:
        sd = {"embed.weight": w.take("wte.weight"), "pos.table.weight": w.take("wpe.weight")}
        for i in range(c.n_layer):
            sd.update(_gpt_block(w, i, c.n_embd, ("ln_1", "ln_2")))
        linear(w, "ln_f", "norm", sd)
        _head(c, w, sd, "wte.weight")
        return sd

    # -- export ---------------------------------------------------------------------------
    def export_problems(self, cfg: ModelConfig) -> list[str]:
        p = []
        if cfg.arch != "gpt":
            p.append(f"arch {cfg.arch!r} (needs gpt)")
        if cfg.causal is False:
            p.append("a bidirectional model")
        for f, want in (("residual", "pre_ln"), ("position", "learned")):
            if split_spec(getattr(cfg, f), f)[0] != want:
                p.append(f"{f} {split_spec(getattr(cfg, f), f)[0]!r} (needs {want})")
        nname, nkw = split_spec(cfg.norm, "norm")
        if nname != "layernorm" or nkw.get("bias", True) is not True:
            p.append("norm must be a LayerNorm with bias")
        mname, mkw = split_spec(cfg.mixer, "mixer")
        if mname != "softmax":
            p.append(f"mixer {mname!r} (needs softmax)")
        heads = int(mkw.get("heads", 4))
        if mkw.get("kv_heads") not in (None, heads):
            p.append("grouped K/V heads")
        if mkw.get("head_dim") not in (None, cfg.d_model // heads):
            p.append("head_dim != d_model / heads")
        if mkw.get("bias", True) is not True or mkw.get("out_bias") is False:
            p.append("attention without biases")
        if mkw.get("scale") not in (None, 1.0, 1.0 / math.sqrt(cfg.d_model // heads)):
            p.append(f"attention scale {mkw.get('scale')}")
        fname, fkw = split_spec(cfg.ffn, "ffn") if cfg.ffn is not None else ("none", {})
        if fname != "mlp" or fkw.get("bias", True) is not True:
            p.append(f"ffn {fname!r} (needs mlp with biases)")
        elif fkw.get("activation", "gelu") not in ACTIVATIONS_BACK:
            p.append(f"activation {fkw.get('activation')!r}")
        return p + plain_stack_problems(cfg)

    def export_config(self, cfg: ModelConfig, model):
        from transformers import GPT2Config
        _, mkw = split_spec(cfg.mixer, "mixer")
        _, fkw = split_spec(cfg.ffn, "ffn")
        _, nkw = split_spec(cfg.norm, "norm")
        heads = int(mkw.get("heads", 4))
        d_ff = int(model.blocks.blocks[0].sublayers[1].fc1.out_features)
        toks = exported_tokens(cfg)
        n_pos = int(model.pos.table.num_embeddings)
        return GPT2Config(
            vocab_size=cfg.vocab_size, n_positions=n_pos, n_embd=cfg.d_model,
            n_layer=cfg.n_layers, n_head=heads, n_inner=d_ff,
            activation_function=ACTIVATIONS_BACK[fkw.get("activation", "gelu")],
            resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
            layer_norm_epsilon=float(nkw.get("eps", 1e-5)),
            scale_attn_weights=mkw.get("scale") != 1.0,
            tie_word_embeddings=bool(cfg.tie_embeddings), **toks)

    def export_weights(self, model, cfg: ModelConfig) -> dict[str, Tensor]:
        own = model.state_dict()
        sd = {"transformer.wte.weight": own["embed.weight"],
              "transformer.wpe.weight": own["pos.table.weight"]}
        for i in range(cfg.n_layers):
            t, h = block_key(i), f"transformer.h.{i}."
            a = f"{t}sublayers.0."
            sd[f"{h}attn.c_attn.weight"] = torch.cat(
                [own[f"{a}{p}.weight"] for p in ("q_proj", "k_proj", "v_proj")], 0).t()
            sd[f"{h}attn.c_attn.bias"] = torch.cat(
                [own[f"{a}{p}.bias"] for p in ("q_proj", "k_proj", "v_proj")], 0)
            sd[f"{h}attn.c_proj.weight"] = own[f"{a}o_proj.weight"].t()
            sd[f"{h}attn.c_proj.bias"] = own[f"{a}o_proj.bias"]
            for hf_name, tv in (("mlp.c_fc", "sublayers.1.fc1"), ("mlp.c_proj", "sublayers.1.fc2")):
                sd[f"{h}{hf_name}.weight"] = own[f"{t}{tv}.weight"].t()
                sd[f"{h}{hf_name}.bias"] = own[f"{t}{tv}.bias"]
            for hf_name, j in (("ln_1", 0), ("ln_2", 1)):
                sd[f"{h}{hf_name}.weight"] = own[f"{t}residuals.{j}.norm.weight"]
                sd[f"{h}{hf_name}.bias"] = own[f"{t}residuals.{j}.norm.bias"]
        sd["transformer.ln_f.weight"] = own["norm.weight"]
        sd["transformer.ln_f.bias"] = own["norm.bias"]
        if not cfg.tie_embeddings:
            sd["lm_head.weight"] = own["head.weight"]
        return {k: v.detach().contiguous().clone() for k, v in sd.items()}


# OpenAI GPT's ``afn`` names (ACT_FNS in modeling_openai): its "gelu" is the tanh approximation.
_OPENAI_ACT = {"gelu": "gelu_tanh", "relu": "relu", "silu": "silu", "swish": "silu"}


@register
class OpenAIGPT(HFFamily):
    model_types = ("openai-gpt",)
    prefixes = ("transformer.",)

    def config(self, c) -> dict:
        act = require(c, "afn", lambda v: v in _OPENAI_ACT, ", ".join(_OPENAI_ACT))
        d = c.n_embd
        return {
            "arch": "gpt", "vocab_size": c.vocab_size, "d_model": d, "n_layers": c.n_layer,
            "max_len": c.n_positions, "mixer": {"name": "softmax", "heads": c.n_head, "bias": True},
            "ffn": {"name": "mlp", "d_ff": 4 * d, "activation": _OPENAI_ACT[act]},
            "norm": {"name": "layernorm", "eps": c.layer_norm_epsilon}, "residual": "post_ln",
            "position": {"name": "learned", "max_len": c.n_positions},
            "dropout": float(c.resid_pdrop),
            "tie_embeddings": bool(getattr(c, "tie_word_embeddings", True)),
            "pad_id": c.pad_token_id, "extra": {"hf": {"model_type": c.model_type,
                                                      **hf_tokens(c)}},
        }

    def weights(self, c, w: Weights, cfg: ModelConfig) -> dict[str, Tensor]:
        sd = {"embed.weight": w.take("tokens_embed.weight"),
              "pos.table.weight": w.take("positions_embed.weight")}
        w.drop(r"position_ids")
        for i in range(c.n_layer):
            sd.update(_gpt_block(w, i, c.n_embd, ("ln_1", "ln_2")))
        _head(c, w, sd, "tokens_embed.weight")
        return sd


@register
class OPT(HFFamily):
    """OPT (Zhang et al., 2022): GPT-2-like with ReLU, pre-LN (post-LN for opt-350m) and a
    position table offset by 2 (fairseq); positions count real tokens, as tevo's do, so tevo's
    table is OPT's sliced from row 2."""

    model_types = ("opt",)
    prefixes = ("model.decoder.", "decoder.")
    OFFSET = 2

    def config(self, c) -> dict:
        require(c, "word_embed_proj_dim", c.hidden_size,
                why="project_in/project_out around the decoder have no tevo counterpart")
        require(c, "layer_norm_elementwise_affine", True, default=True)
        pre = bool(c.do_layer_norm_before)
        if pre:
            require(c, "_remove_final_layer_norm", False, default=False)
        act = activation(c.model_type, "activation_function", c.activation_function)
        bias = bool(getattr(c, "enable_bias", True))
        return {
            "arch": "gpt", "vocab_size": c.vocab_size, "d_model": c.hidden_size,
            "n_layers": c.num_hidden_layers, "max_len": c.max_position_embeddings,
            "mixer": {"name": "softmax", "heads": c.num_attention_heads, "bias": bias},
            "ffn": {"name": "mlp", "d_ff": c.ffn_dim, "activation": act, "bias": bias},
            "norm": "layernorm", "residual": "pre_ln" if pre else "post_ln",
            "position": {"name": "learned", "max_len": c.max_position_embeddings},
            "dropout": float(c.dropout),
            "tie_embeddings": bool(getattr(c, "tie_word_embeddings", True)),
            "pad_id": c.pad_token_id, "extra": {"hf": {"model_type": c.model_type,
                                                      **hf_tokens(c)}},
        }

    def weights(self, c, w: Weights, cfg: ModelConfig) -> dict[str, Tensor]:
        sd = {"embed.weight": w.take("embed_tokens.weight"),
              "pos.table.weight": w.take("embed_positions.weight")[self.OFFSET:]}
        for i in range(c.num_hidden_layers):
            h, t = f"layers.{i}.", block_key(i)
            for a, b in (("q_proj", "q_proj"), ("k_proj", "k_proj"), ("v_proj", "v_proj"),
                         ("out_proj", "o_proj")):
                linear(w, f"{h}self_attn.{a}", f"{t}sublayers.0.{b}", sd)
            linear(w, f"{h}fc1", f"{t}sublayers.1.fc1", sd)
            linear(w, f"{h}fc2", f"{t}sublayers.1.fc2", sd)
            linear(w, f"{h}self_attn_layer_norm", f"{t}residuals.0.norm", sd)
            linear(w, f"{h}final_layer_norm", f"{t}residuals.1.norm", sd)
        if c.do_layer_norm_before:
            linear(w, "final_layer_norm", "norm", sd)
        _head(c, w, sd, "embed_tokens.weight")
        return sd
