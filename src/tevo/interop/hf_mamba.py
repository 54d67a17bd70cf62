"""Mamba (transformers' ``MambaForCausalLM``) → tevo ``gpt`` with the ``mamba`` mixer.

- Block: x += Mixer(RMSNorm(x)) with no FFN is tevo's pre-LN block with layout ``"a"``;
  ``norm_f`` is the final norm; the LM head is tied to the embeddings (``tie_word_embeddings``).
  No position encoding.
- The depthwise ``conv1d`` weight (E, 1, k) is a cross-correlation over the last k inputs;
  tevo's kernel is indexed by lag (tap j multiplies x_{t−j}), so it is flipped along k.
- Padding: transformers zeroes a left-padded batch's padding before ``in_proj`` and after the
  convolution (``apply_mask_to_padding_states``); tevo zeroes it after ``in_proj`` and after the
  convolution. With ``use_bias=False`` (every released checkpoint) in_proj(0) = 0 and the two
  agree exactly; with ``use_bias=True`` transformers lets the bias of padding positions into the
  first real tokens' convolution, tevo does not (its padded rows equal the unpadded ones).
- ``residual_in_fp32``, ``use_mambapy``, ``use_associative_scan`` only choose the numerics or
  the kernel of the same function and are accepted.
"""
from __future__ import annotations

from torch import Tensor

from ..config import ModelConfig
from .hf import (HFFamily, Weights, activation, block_key, hf_tokens, lm_head, register,
                 require)


@register
class Mamba(HFFamily):
    model_types = ("mamba",)
    prefixes = ("backbone.",)

    def config(self, c) -> dict:
        require(c, "hidden_act", lambda v: activation(c.model_type, "hidden_act", v) == "silu",
                "silu", why="the Mamba block gates and activates with SiLU")
        d = c.hidden_size
        E = int(c.intermediate_size)
        expand = E // d
        require(c, "intermediate_size", lambda v: int(v) == expand * d,
                "a multiple of hidden_size", why="tevo's mamba sets E = expand · d_model")
        mixer = {"name": "mamba", "d_state": int(c.state_size), "d_conv": int(c.conv_kernel),
                 "expand": expand, "dt_rank": int(c.time_step_rank),
                 "bias": bool(c.use_bias), "conv_bias": bool(c.use_conv_bias)}
        return {
            "arch": "gpt", "vocab_size": c.vocab_size, "d_model": d,
            "n_layers": c.num_hidden_layers, "max_len": int(getattr(c, "max_position_embeddings",
                                                                    None) or 2048),
            "mixer": mixer, "ffn": "mlp",
            "norm": {"name": "rmsnorm", "eps": float(c.layer_norm_epsilon)},
            "residual": "pre_ln", "layout": "a", "position": "none", "dropout": 0.0,
            "tie_embeddings": bool(getattr(c, "tie_word_embeddings", True)),
            "pad_id": getattr(c, "pad_token_id", None),
            "extra": {"hf": {"model_type": c.model_type, **hf_tokens(c)}},
        }

    def weights(self, c, w: Weights, cfg: ModelConfig) -> dict[str, Tensor]:
        sd = {"embed.weight": w.take("embeddings.weight")}
        for i in range(c.num_hidden_layers):
            h, t = f"layers.{i}.", block_key(i)
            sd[f"{t}residuals.0.norm.weight"] = w.take(f"{h}norm.weight")
            m, a = f"{h}mixer.", f"{t}sublayers.0."
            for p in ("in_proj", "x_proj", "dt_proj", "out_proj"):
                sd[f"{a}{p}.weight"] = w.take(f"{m}{p}.weight")
                if f"{m}{p}.bias" in w:
                    sd[f"{a}{p}.bias"] = w.take(f"{m}{p}.bias")
            sd[f"{a}conv_weight"] = w.take(f"{m}conv1d.weight")[:, 0].flip(-1)   # (E, k) by lag
            if f"{m}conv1d.bias" in w:
                sd[f"{a}conv_bias"] = w.take(f"{m}conv1d.bias")
            sd[f"{a}A_log"] = w.take(f"{m}A_log")
            sd[f"{a}D"] = w.take(f"{m}D")
        sd["norm.weight"] = w.take("norm_f.weight")
        lm_head(c, w, sd, cfg, "the word embeddings")
        return sd
