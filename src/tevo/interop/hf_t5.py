"""T5 (v1.0 and v1.1) ⇄ tevo ``transformer`` (encoder–decoder).

T5 (Raffel et al., 2020): pre-norm RMSNorm blocks without biases, unscaled attention scores
(the 1/√d is folded into the initialisation), a learned bias per head and relative-distance
bucket (``t5_bias``) shared by every layer of a stack — bidirectional buckets in the encoder, a
second table with causal buckets in the decoder (``model.extra.dec_position``) — no bias in
cross-attention, ReLU or gated-GELU FFNs, and one embedding shared by encoder and decoder.

Embedding scale: tevo's encoder–decoder multiplies embeddings by √d (Vaswani et al., §3.4) and
T5 does not, so tevo's table is T5's divided by √d. With the head tied to that table the logits
are h·E^T/√d — exactly T5's ``sequence_output * d_model**-0.5`` before its tied ``lm_head``.
"""
from __future__ import annotations

import math

from torch import Tensor

from ..config import ModelConfig
from .hf import (ConversionError, HFFamily, Weights, activation, block_key, hf_tokens, register,
                 require)


def _scaled_outputs(c) -> bool:
    """Whether T5 rescales the decoder output by d^-0.5 before the head (T5 v1.0)."""
    if hasattr(c, "scale_decoder_outputs"):                  # transformers >= 5
        return bool(c.scale_decoder_outputs)
    return bool(getattr(c, "tie_word_embeddings", True))


@register
class T5(HFFamily):
    model_types = ("t5",)

    def config(self, c) -> dict:
        require(c, "is_decoder", False, default=False)
        act = activation(c.model_type, "feed_forward_proj",
                         "gelu_new" if c.feed_forward_proj == "gated-gelu" else c.dense_act_fn)
        heads = c.num_heads
        attn = {"name": "softmax", "heads": heads, "bias": False, "scale": 1.0}
        if c.d_kv * heads != c.d_model:
            attn["head_dim"] = c.d_kv
        ffn = ({"name": "glu", "d_ff": c.d_ff, "activation": act, "bias": False}
               if c.is_gated_act else
               {"name": "mlp", "d_ff": c.d_ff, "activation": act, "bias": False})
        bias = {"name": "t5_bias", "num_buckets": c.relative_attention_num_buckets,
                "max_distance": c.relative_attention_max_distance}
        return {
            "arch": "transformer", "vocab_size": c.vocab_size, "d_model": c.d_model,
            "n_layers": c.num_layers, "n_dec_layers": c.num_decoder_layers or c.num_layers,
            "max_len": 512, "mixer": attn, "cross": dict(attn), "ffn": ffn,
            "norm": {"name": "rmsnorm", "eps": float(c.layer_norm_epsilon)},
            "residual": "pre_ln", "position": {**bias, "bidirectional": True},
            "layout": "a f", "dropout": float(c.dropout_rate),
            "tie_embeddings": True, "pad_id": c.pad_token_id,
            "extra": {"dec_position": {**bias, "bidirectional": False},
                      "hf": {"model_type": c.model_type,
                             "decoder_start_token_id": getattr(c, "decoder_start_token_id", None),
                             **hf_tokens(c)}},
        }

    def weights(self, c, w: Weights, cfg: ModelConfig) -> dict[str, Tensor]:
        d = c.d_model
        shared = w.take("shared.weight")
        sd = {"embed.weight": shared / math.sqrt(d)}
        for stack in ("encoder", "decoder"):
            emb = w.get(f"{stack}.embed_tokens.weight")
            if emb is not None and not emb.equal(shared):
                raise ConversionError(f"t5: {stack}.embed_tokens differs from shared (separate "
                                      f"encoder/decoder embeddings are not supported)")
        n_enc, n_dec = c.num_layers, c.num_decoder_layers or c.num_layers
        for stack, n, pos_key in (("encoder", n_enc, "pos"), ("decoder", n_dec, "dec_pos")):
            rel = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
            sd[f"{pos_key}.table.weight"] = w.take(rel)
            for i in range(n):
                self._block(c, w, stack, i, sd)
            norm_key = "enc_norm" if stack == "encoder" else "dec_norm"
            sd[f"{norm_key}.weight"] = w.take(f"{stack}.final_layer_norm.weight")
        lm = w.get("lm_head.weight")
        if not cfg.tie_embeddings:
            head = shared if lm is None else lm
            sd["head.weight"] = head / math.sqrt(d) if _scaled_outputs(c) else head
        return sd

    def refine(self, c, w: Weights, data: dict) -> None:
        """Tie tevo's head to its (shared/√d) embedding exactly when T5 computes
        (h·d^-0.5)·shared^T: a head equal to ``shared`` and scaled outputs."""
        lm = w.sd.get("lm_head.weight")
        same = lm is None or lm.equal(w.sd["shared.weight"])
        data["tie_embeddings"] = bool(same and _scaled_outputs(c))

    def _block(self, c, w: Weights, stack: str, i: int, sd: dict) -> None:
        h, t = f"{stack}.block.{i}.layer.", block_key(i, stack)
        for p in ("q", "k", "v", "o"):
            sd[f"{t}sublayers.0.{p}_proj.weight"] = w.take(f"{h}0.SelfAttention.{p}.weight")
        sd[f"{t}residuals.0.norm.weight"] = w.take(f"{h}0.layer_norm.weight")
        f = 1
        if stack == "decoder":
            for p in ("q", "k", "v", "o"):
                sd[f"{t}sublayers.1.{p}_proj.weight"] = w.take(f"{h}1.EncDecAttention.{p}.weight")
            sd[f"{t}residuals.1.norm.weight"] = w.take(f"{h}1.layer_norm.weight")
            f = 2
        ff = f"{h}{f}.DenseReluDense."
        if c.is_gated_act:
            sd[f"{t}sublayers.{f}.gate_proj.weight"] = w.take(f"{ff}wi_0.weight")
            sd[f"{t}sublayers.{f}.up_proj.weight"] = w.take(f"{ff}wi_1.weight")
        else:
            sd[f"{t}sublayers.{f}.fc1.weight"] = w.take(f"{ff}wi.weight")
        sd[f"{t}sublayers.{f}.fc2.weight"] = w.take(f"{ff}wo.weight")
        sd[f"{t}residuals.{f}.norm.weight"] = w.take(f"{h}{f}.layer_norm.weight")
