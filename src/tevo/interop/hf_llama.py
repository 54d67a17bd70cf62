"""Llama, Mistral and Qwen2 ⇄ tevo ``gpt`` with RMSNorm, rotary positions and SwiGLU.

Llama (Touvron et al., 2023): pre-norm RMSNorm blocks, rotary positions in the "half" layout
(``rotate_half``: channel i pairs with i + e/2), grouped-query attention (``kv_heads``), a
SwiGLU FFN ``down(silu(gate(x)) ⊙ up(x))`` and an untied head by default. Mistral adds a
sliding window; Qwen2 adds biases on q, k, v (not on the output projection).
"""
from __future__ import annotations

import math

from torch import Tensor

from ..config import ModelConfig
from ..registry import MIXERS, split_spec
from .hf import (ACTIVATIONS_BACK, HFFamily, UnsupportedHFOption, Weights, activation,
                 block_key, exported_tokens, head_dim_of, hf_tokens, linear, lm_head,
                 plain_stack_problems, register, require, rope_parameters)


def rope_spec(c, head_dim: int, partial: float | None = None, layout: str = "half") -> dict:
    """tevo ``rope`` spec for an HF config's rotary settings (default, or the linear, dynamic
    NTK, llama3 and yarn scalings)."""
    rp = rope_parameters(c)
    kind = rp.get("rope_type", "default")
    spec = {"name": "rope", "base": float(rp.get("rope_theta", 10000.0)), "layout": layout}
    if partial is None:
        partial = rp.get("partial_rotary_factor", 1.0)
    if partial is not None and float(partial) != 1.0:
        spec["rotary_dim"] = int(head_dim * float(partial))
    if kind == "linear":
        spec.update(scaling="linear", factor=float(rp["factor"]))
    elif kind == "dynamic":                 # NTK from the call's length past max_position
        spec.update(scaling="dynamic", factor=float(rp["factor"]),
                    original_max_len=int(c.max_position_embeddings))
    elif kind == "llama3":
        spec.update(scaling="llama3", factor=float(rp["factor"]),
                    low_freq_factor=float(rp["low_freq_factor"]),
                    high_freq_factor=float(rp["high_freq_factor"]),
                    original_max_len=int(rp["original_max_position_embeddings"]))
    elif kind == "yarn":
        L0 = int(rp.get("original_max_position_embeddings") or c.max_position_embeddings)
        factor = rp.get("factor")
        factor = float(c.max_position_embeddings / L0 if factor is None else factor)
        af = rp.get("attention_factor")
        ms, ms_all = rp.get("mscale"), rp.get("mscale_all_dim")
        if af is None and ms and ms_all and factor > 1:     # DeepSeek's ratio of two mscales
            af = (0.1 * ms * math.log(factor) + 1.0) / (0.1 * ms_all * math.log(factor) + 1.0)
        spec.update(scaling="yarn", factor=factor, original_max_len=L0,
                    beta_fast=float(rp.get("beta_fast") or 32.0),
                    beta_slow=float(rp.get("beta_slow") or 1.0),
                    truncate=bool(rp.get("truncate", True)))
        if af is not None:
            spec["attention_factor"] = float(af)
    elif kind != "default":
        raise UnsupportedHFOption(c.model_type, "rope_parameters.rope_type", kind,
                                  "default, linear, dynamic, llama3, yarn")
    return spec


def sliding_window_mixer(c, mixer: dict, window) -> dict:
    """The ``local`` mixer spec for a sliding window of ``window`` keys: query i sees keys j
    with 0 ≤ i − j < window, as in transformers' sliding-window mask."""
    if window is None:
        return mixer
    if "local" not in MIXERS:
        raise UnsupportedHFOption(c.model_type, "sliding_window", window,
                                  why="waits for tevo's sliding-window attention mixer 'local'; "
                                      "set sliding_window=None for full attention")
    from ..registry import accepted_kwargs
    spec = {**mixer, "name": "local", "window": int(window)}
    acc = accepted_kwargs(MIXERS.get("local").obj)
    bad = sorted(k for k in spec if k != "name" and acc is not None and k not in acc)
    if bad:
        raise UnsupportedHFOption(c.model_type, "sliding_window", window,
                                  why=f"tevo's 'local' mixer has no option {', '.join(bad)}")
    return spec


class LlamaLike(HFFamily):
    prefixes = ("model.",)
    qkv_bias_option = "attention_bias"      # HF option giving the q/k/v (and o) biases
    o_bias_follows = True                   # the output projection has the same bias
    mlp_bias_option: str | None = "mlp_bias"

    def window(self, c):
        return None

    def config(self, c) -> dict:
        act = activation(c.model_type, "hidden_act", c.hidden_act)
        require(c, "pretraining_tp", lambda v: True, default=1)  # numerically irrelevant
        d, heads = c.hidden_size, c.num_attention_heads
        kv = getattr(c, "num_key_value_heads", None) or heads
        hd = head_dim_of(c, d, heads)
        qkv_bias = bool(getattr(c, self.qkv_bias_option, False)) if self.qkv_bias_option else True
        mixer = {"name": "softmax", "heads": heads, "kv_heads": kv, "bias": qkv_bias}
        if hd * heads != d:
            mixer["head_dim"] = hd
        if not self.o_bias_follows:
            mixer["out_bias"] = False
        window = self.window(c)
        layers = {}
        if isinstance(window, list):            # per-layer windows (None: full attention)
            ws = set(window)
            if len(ws) == 1:
                window = window[0]
            else:
                for w in sorted(ws - {None}):
                    key = ",".join(str(i) for i, x in enumerate(window) if x == w)
                    layers[key] = {"mixer": sliding_window_mixer(c, dict(mixer), w)}
                window = None
        mixer = sliding_window_mixer(c, mixer, window)
        mlp_bias = bool(getattr(c, self.mlp_bias_option, False)) if self.mlp_bias_option else False
        ffn = {"name": "swiglu" if act == "silu" else "glu", "d_ff": c.intermediate_size,
               "bias": mlp_bias}
        if act != "silu":
            ffn["activation"] = act
        return {
            "arch": "gpt", "vocab_size": c.vocab_size, "d_model": d,
            "n_layers": c.num_hidden_layers, "max_len": c.max_position_embeddings,
            "mixer": mixer, "ffn": ffn, "norm": {"name": "rmsnorm", "eps": float(c.rms_norm_eps)},
            "residual": "pre_ln", "position": rope_spec(c, hd),
            "dropout": float(getattr(c, "attention_dropout", 0.0) or 0.0),
            "tie_embeddings": bool(getattr(c, "tie_word_embeddings", False)),
            "pad_id": c.pad_token_id,
            "extra": {"hf": {"model_type": c.model_type, **hf_tokens(c)}},
            **({"layers": layers} if layers else {}),
        }

    def weights(self, c, w: Weights, cfg: ModelConfig) -> dict[str, Tensor]:
        sd = {"embed.weight": w.take("embed_tokens.weight")}
        w.drop(r"rotary_emb\.inv_freq|layers\.\d+\.self_attn\.rotary_emb\.inv_freq")
        for i in range(c.num_hidden_layers):
            h, t = f"layers.{i}.", block_key(i)
            for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
                linear(w, f"{h}self_attn.{p}", f"{t}sublayers.0.{p}", sd)
            linear(w, f"{h}mlp.gate_proj", f"{t}sublayers.1.gate_proj", sd)
            linear(w, f"{h}mlp.up_proj", f"{t}sublayers.1.up_proj", sd)
            linear(w, f"{h}mlp.down_proj", f"{t}sublayers.1.fc2", sd)
            sd[f"{t}residuals.0.norm.weight"] = w.take(f"{h}input_layernorm.weight")
            sd[f"{t}residuals.1.norm.weight"] = w.take(f"{h}post_attention_layernorm.weight")
        sd["norm.weight"] = w.take("norm.weight")
        lm_head(c, w, sd, cfg, "embed_tokens.weight")
        return sd


@register
class Llama(LlamaLike):
    model_types = ("llama",)
    hf_class = "LlamaForCausalLM"

    # -- export ---------------------------------------------------------------------------
    def export_problems(self, cfg: ModelConfig) -> list[str]:
        p = []
        if cfg.arch != "gpt":
            p.append(f"arch {cfg.arch!r} (needs gpt)")
        if split_spec(cfg.residual, "residual")[0] != "pre_ln":
            p.append("residual must be pre_ln")
        if split_spec(cfg.norm, "norm")[0] != "rmsnorm":
            p.append("norm must be rmsnorm")
        pname, pkw = split_spec(cfg.position, "position")
        if pname != "rope":
            p.append(f"position {pname!r} (needs rope)")
        else:
            if pkw.get("layout", "half") != "half":
                p.append("rope layout must be 'half'")
            if pkw.get("scaling") not in (None, "none", "linear"):
                p.append(f"rope scaling {pkw.get('scaling')!r}")
        mname, mkw = split_spec(cfg.mixer, "mixer")
        heads = int(mkw.get("heads", 4))
        hd = int(mkw.get("head_dim") or cfg.d_model // heads)
        if pname == "rope" and pkw.get("rotary_dim") not in (None, 1.0, hd):
            p.append("partial rotary (rotary_dim)")
        if mname not in ("softmax", "gqa", "mqa"):
            p.append(f"mixer {mname!r} (needs softmax, gqa or mqa)")
        if mkw.get("scale") is not None:
            p.append("a custom attention scale")
        if mkw.get("out_bias") is not None and mkw.get("out_bias") != mkw.get("bias", True):
            p.append("different q/k/v and output biases")
        fname, fkw = split_spec(cfg.ffn, "ffn") if cfg.ffn is not None else ("none", {})
        act = {"swiglu": "silu", "geglu": "gelu", "reglu": "relu"}.get(
            fname, fkw.get("activation", "sigmoid") if fname == "glu" else None)
        if act is None or act not in ACTIVATIONS_BACK:
            p.append(f"ffn {fname!r} (needs a gated FFN: swiglu)")
        return p + plain_stack_problems(cfg, causal=True)

    def export_config(self, cfg: ModelConfig, model):
        import transformers
        from transformers import LlamaConfig
        fname, fkw = split_spec(cfg.ffn, "ffn")
        _, nkw = split_spec(cfg.norm, "norm")
        _, pkw = split_spec(cfg.position, "position")
        attn = model.blocks.blocks[0].sublayers[0]             # dimensions as built
        ffn = model.blocks.blocks[0].sublayers[1]
        act = {"swiglu": "silu", "geglu": "gelu", "reglu": "relu"}.get(
            fname, fkw.get("activation", "sigmoid"))
        theta = float(pkw.get("base", 10000.0))
        rp = {"rope_type": "default", "rope_theta": theta}
        if pkw.get("scaling") == "linear":
            rp.update(rope_type="linear", factor=float(pkw.get("factor", 1.0)))
        if int(transformers.__version__.split(".")[0]) >= 5:
            rope = {"rope_parameters": rp}
        else:                                       # transformers 4.x: rope_theta + rope_scaling
            rope = {"rope_theta": theta}
            if rp["rope_type"] != "default":
                rope["rope_scaling"] = {"rope_type": rp["rope_type"], "factor": rp["factor"]}
        toks = exported_tokens(cfg)
        return LlamaConfig(
            vocab_size=cfg.vocab_size, hidden_size=cfg.d_model,
            intermediate_size=int(ffn.up_proj.out_features), num_hidden_layers=cfg.n_layers,
            num_attention_heads=attn.heads, num_key_value_heads=attn.kv_heads,
            head_dim=attn.head_dim, hidden_act=ACTIVATIONS_BACK[act],
            max_position_embeddings=cfg.max_len, rms_norm_eps=float(nkw.get("eps", 1e-6)),
            tie_word_embeddings=bool(cfg.tie_embeddings), **rope,
            attention_bias=attn.q_proj.bias is not None, mlp_bias=ffn.up_proj.bias is not None,
            attention_dropout=cfg.dropout, **toks)

    def export_weights(self, model, cfg: ModelConfig) -> dict[str, Tensor]:
        own = model.state_dict()
        sd = {"model.embed_tokens.weight": own["embed.weight"],
              "model.norm.weight": own["norm.weight"]}
        for i in range(cfg.n_layers):
            t, h = block_key(i), f"model.layers.{i}."
            for hf_name, tv in (("self_attn.q_proj", "sublayers.0.q_proj"),
                                ("self_attn.k_proj", "sublayers.0.k_proj"),
                                ("self_attn.v_proj", "sublayers.0.v_proj"),
                                ("self_attn.o_proj", "sublayers.0.o_proj"),
                                ("mlp.gate_proj", "sublayers.1.gate_proj"),
                                ("mlp.up_proj", "sublayers.1.up_proj"),
                                ("mlp.down_proj", "sublayers.1.fc2")):
                for s in ("weight", "bias"):
                    if f"{t}{tv}.{s}" in own:
                        sd[f"{h}{hf_name}.{s}"] = own[f"{t}{tv}.{s}"]
            sd[f"{h}input_layernorm.weight"] = own[f"{t}residuals.0.norm.weight"]
            sd[f"{h}post_attention_layernorm.weight"] = own[f"{t}residuals.1.norm.weight"]
        if not cfg.tie_embeddings:
            sd["lm_head.weight"] = own["head.weight"]
        return {k: v.detach().contiguous().clone() for k, v in sd.items()}


@register
class Mistral(LlamaLike):
    model_types = ("mistral",)
    qkv_bias_option = None
    mlp_bias_option = None

    def config(self, c) -> dict:
        data = super().config(c)
        data["mixer"]["bias"] = False
        return data

    def window(self, c):
        return getattr(c, "sliding_window", None)


@register
class Qwen2(LlamaLike):
    model_types = ("qwen2",)
    qkv_bias_option = None                  # q, k, v always have biases, o never
    o_bias_follows = False
    mlp_bias_option = None

    def window(self, c):
        """Per-layer windows: layer i slides iff ``layer_types[i] == "sliding_attention"``
        (transformers 5; derived from ``use_sliding_window`` and ``max_window_layers`` as its
        config does when absent); the others are full attention."""
        w = getattr(c, "sliding_window", None) if getattr(c, "use_sliding_window", False) \
            else None
        if w is None:
            return None
        types = getattr(c, "layer_types", None) or [
            "sliding_attention" if i >= getattr(c, "max_window_layers", 0) else "full_attention"
            for i in range(c.num_hidden_layers)]
        bad = sorted(set(types) - {"sliding_attention", "full_attention"})
        if bad:
            raise UnsupportedHFOption(c.model_type, "layer_types", bad[0],
                                      "sliding_attention, full_attention")
        return [int(w) if t == "sliding_attention" else None for t in types]
