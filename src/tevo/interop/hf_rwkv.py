"""RWKV-4 (transformers' ``RwkvForCausalLM``) → tevo ``gpt`` with ``rwkv`` + ``rwkv_channel_mix``.

- Block: x += TimeMix(LN_1(x)); x += ChannelMix(LN_2(x)) is tevo's pre-LN ``"a f"`` block; the
  LayerNorm that block 0 applies to the embeddings (``pre_ln``) is tevo's ``embedding_norm``;
  ``ln_out`` is the final norm. No position encoding (the recurrence orders the tokens).
- ``time_mix_*`` (1, 1, d) become the (d,) interpolation weights μ; ``time_decay`` and
  ``time_first`` are kept as they are (w = exp(time_decay), u = time_first).
- ``rescale_every`` (a half-precision device): in eval mode transformers halves the residual
  stream after every ``rescale_every`` blocks and divides the blocks' output weights *in place*
  to match. tevo converts the checkpoint's function, the unscaled stream (training mode, the
  authors' fp32 inference): weights read from a live model whose layers were rescaled are
  multiplied back (``live_state_dict``). LayerNorm is scale-invariant except for its ε, so the
  two differ only in that a stream scaled by 2^-k sees an effective ε·4^k: exact with
  ``rescale_every=0`` or at most ``rescale_every`` blocks, and otherwise differences of order
  ε·4^k/Var(x) (6e-4 on a 3-block random model with ``rescale_every=1``).
- transformers' RWKV ignores the attention mask (it warns "unused"): its outputs for a
  left-padded row depend on the padding tokens. tevo's padded rows equal the unpadded ones, so
  ``check_equivalence`` (and ``tevo convert --check``) compare the two on unpadded input.
"""
from __future__ import annotations

import re

from torch import Tensor

from ..config import ModelConfig
from .hf import HFFamily, Weights, block_key, hf_tokens, lm_head, register, require


@register
class RWKV(HFFamily):
    model_types = ("rwkv",)
    prefixes = ("rwkv.",)
    hf_reads_padding = False            # transformers' RWKV ignores attention_mask

    def live_state_dict(self, model, sd: dict[str, Tensor]) -> dict[str, Tensor]:
        base = getattr(model, "rwkv", model)
        every = int(getattr(model.config, "rescale_every", 0) or 0)
        if not (getattr(base, "layers_are_rescaled", False) and every > 0):
            return sd
        sd = dict(sd)
        for k in sd:                                     # undo W / 2^(i // every), in a copy
            m = re.search(r"blocks\.(\d+)\.(attention\.output|feed_forward\.value)\.weight$", k)
            if m:
                sd[k] = sd[k] * 2 ** (int(m.group(1)) // every)
        return sd

    def config(self, c) -> dict:
        d = c.hidden_size
        eps = require(c, "layer_norm_epsilon", lambda v: abs(float(v) - 1e-5) < 1e-12,
                      "1e-05", why="transformers' final ln_out always uses ε = 1e-5 while "
                                   "the block norms use layer_norm_epsilon; tevo has one norm "
                                   "spec", default=1e-5)
        mixer = {"name": "rwkv"}
        if c.attention_hidden_size not in (None, d):
            mixer["d_att"] = int(c.attention_hidden_size)
        d_ff = int(c.intermediate_size) if c.intermediate_size is not None else 4 * d
        return {
            "arch": "gpt", "vocab_size": c.vocab_size, "d_model": d,
            "n_layers": c.num_hidden_layers, "max_len": int(c.context_length),
            "mixer": mixer, "ffn": {"name": "rwkv_channel_mix", "d_ff": d_ff},
            "norm": {"name": "layernorm", "eps": float(eps)}, "residual": "pre_ln",
            "layout": "a f", "position": "none", "embedding_norm": True, "dropout": 0.0,
            "tie_embeddings": bool(getattr(c, "tie_word_embeddings", False)),
            "pad_id": getattr(c, "pad_token_id", None),
            "extra": {"hf": {"model_type": c.model_type, **hf_tokens(c)}},
        }

    def weights(self, c, w: Weights, cfg: ModelConfig) -> dict[str, Tensor]:
        sd = {"embed.weight": w.take("embeddings.weight"),
              "emb_norm.weight": w.take("blocks.0.pre_ln.weight"),
              "emb_norm.bias": w.take("blocks.0.pre_ln.bias")}
        for i in range(c.num_hidden_layers):
            h, t = f"blocks.{i}.", block_key(i)
            for j, ln in ((0, "ln1"), (1, "ln2")):
                sd[f"{t}residuals.{j}.norm.weight"] = w.take(f"{h}{ln}.weight")
                sd[f"{t}residuals.{j}.norm.bias"] = w.take(f"{h}{ln}.bias")
            att, ffn = f"{h}attention.", f"{h}feed_forward."
            a, f = f"{t}sublayers.0.", f"{t}sublayers.1."
            for p in ("time_decay", "time_first"):
                sd[f"{a}{p}"] = w.take(f"{att}{p}").reshape(-1)
            for p in ("k", "v", "r"):
                name = {"k": "key", "v": "value", "r": "receptance"}[p]
                sd[f"{a}mix_{p}"] = w.take(f"{att}time_mix_{name}").reshape(-1)
                sd[f"{a}{name}.weight"] = w.take(f"{att}{name}.weight")
            sd[f"{a}out_proj.weight"] = w.take(f"{att}output.weight")
            sd[f"{f}mix_k"] = w.take(f"{ffn}time_mix_key").reshape(-1)
            sd[f"{f}mix_r"] = w.take(f"{ffn}time_mix_receptance").reshape(-1)
            sd[f"{f}key.weight"] = w.take(f"{ffn}key.weight")
            sd[f"{f}receptance.weight"] = w.take(f"{ffn}receptance.weight")
            sd[f"{f}out_proj.weight"] = w.take(f"{ffn}value.weight")
        sd["norm.weight"] = w.take("ln_out.weight")
        sd["norm.bias"] = w.take("ln_out.bias")
        if "head.weight" in w:                              # RWKV names its LM head "head"
            w.sd["lm_head.weight"] = w.sd.pop("head.weight")
        lm_head(c, w, sd, cfg, "the word embeddings")
        return sd
