"""Decoder-only language model (GPT-1/2/3, LLaMA- and BLOOM-style presets).

Paper: Improving Language Understanding by Generative Pre-Training (Radford et al., 2018);
Language Models are Unsupervised Multitask Learners (GPT-2, 2019).
    h_0 = W_e[u] + W_p;  h_l = block(h_{l-1});  P(u) = softmax(h_L W_e^T)   (GPT-1 eq. 2)
Complexity: L × (mixer + FFN) per token; decoding reuses every layer's incremental state.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import ModelConfig, model_config
from ..nn.context import MixerContext
from ..registry import EMBEDDINGS, MEMORIES, MODELS, PEFT
from .block import BlockStack
from .common import (ModelOutput, build_norm, build_position, check_ids, extend_mask,
                     init_weights, token_positions)


@MODELS.register(
    "gpt", paper="Improving Language Understanding by Generative Pre-Training (Radford et al., "
                 "2018); GPT-2 (2019); GPT-3 (2020)",
    equation="GPT-1 eq. 2: h_0 = UW_e + W_p; h_l = block(h_{l-1}); P(u) = softmax(h_n W_e^T)",
    complexity=("L·(mixer + O(n d²))", "L·mixer state"),
    test="tests/papers/test_models.py::test_gpt2_preset_cached_decode_equals_full_pass")
class LanguageModel(nn.Module):
    """Token embedding → positions → blocks → norm → tied head; causal, with incremental state."""

    default_causal = True
    has_decoder = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.causal = cfg.causal if cfg.causal is not None else True
        if cfg.embedding is not None:                              # e.g. DeFINE
            self.embed = EMBEDDINGS.build(cfg.embedding, "model.embedding",
                                          vocab_size=cfg.vocab_size, d_model=d,
                                          dropout=cfg.dropout)
        else:
            self.embed = nn.Embedding(cfg.vocab_size, d)
        self.pos = build_position(cfg)
        self.emb_norm = build_norm(cfg) if cfg.embedding_norm else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = self.build_blocks(cfg)
        rev = (cfg.extra or {}).get("reversible")
        if rev:                           # Reformer's reversible layers (tevo.peft.reversible)
            spec = {"name": "reversible", **({} if rev is True else dict(rev))}
            self.blocks = PEFT.build(spec, "model.extra.reversible", stack=self.blocks)
        use_final = cfg.final_norm if cfg.final_norm is not None else self.blocks.final_norm
        self.norm = build_norm(cfg) if use_final else None
        self.head = nn.Linear(d, cfg.vocab_size, bias=cfg.head_bias)
        init_weights(self, cfg, cfg.n_layers)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        # segment-level memory (Transformer-XL): used by forward_segment, never by forward
        self.memory = (None if cfg.memory is None else
                       MEMORIES.build(cfg.memory, "model.memory", d_model=d,
                                      n_layers=cfg.n_layers))
        if hasattr(self.memory, "bind"):         # parameters sized by the model's layers
            self.memory.bind(self)

    def build_blocks(self, cfg: ModelConfig) -> nn.Module:
        """The layer stack; architectures with other layers (Branchformer) override it."""
        return BlockStack(cfg, self.causal)

    def init_state(self, batch: int, device=None, dtype=None) -> dict:
        return {"layers": self.blocks.init_state(batch, device, dtype), "mask": None, "length": 0}

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                state: dict | None = None, positions: Tensor | None = None,
                return_hidden: bool = False, attn_mask: Tensor | None = None) -> ModelOutput:
        """input_ids (B, n); attention_mask (B, n) True/1 = real token (of the new tokens only
        when a state is given); state from ``init_state`` or a previous call; ``attn_mask``
        (B|1, n, n_k) bool: an extra attention pattern (``MixerContext.attn_mask``)."""
        check_ids(input_ids, self.cfg.vocab_size)
        B, n = input_ids.shape
        dev = input_ids.device
        full_mask = extend_mask(state, attention_mask, B, n, dev)
        if positions is None:
            positions = token_positions(state, full_mask, B, n, dev)
        x = self.embed_tokens(input_ids, positions)                 # (B, n, d)
        ctx = MixerContext(causal=self.causal, key_padding_mask=full_mask, positions=positions,
                           pos=self.pos, attn_mask=attn_mask)
        x, layer_states = self.blocks(x, ctx, None if state is None else state["layers"])
        if self.norm is not None:
            x = self.norm(x)
        logits = self.head(x)                                       # (B, n, V)
        new_state = None
        if state is not None:
            new_state = {"layers": layer_states, "mask": full_mask,
                         "length": state.get("length", 0) + n}
        return ModelOutput(logits, new_state, ctx.aux_loss(), x if return_hidden else None,
                           {"aux": ctx.aux})

    def embed_tokens(self, input_ids: Tensor, positions: Tensor) -> Tensor:
        """The input of the first block: token embedding, ``input`` positions, embedding norm,
        dropout. input_ids, positions (B, n) -> (B, n, d)."""
        x = self.embed(input_ids)                                   # (B, n, d)
        x = self.pos.embed(x, positions) if "input" in self.pos.hooks else x
        if self.emb_norm is not None:
            x = self.emb_norm(x)
        return self.drop(x)

    def init_memory(self, batch: int, device=None, dtype=None) -> dict:
        """An empty segment memory for ``forward_segment`` (needs ``model.memory``)."""
        return self._segment_memory().init_memory(batch, device, dtype)

    def forward_segment(self, input_ids: Tensor, memory: dict | None = None,
                        attention_mask: Tensor | None = None) -> ModelOutput:
        """One segment of a stream with the model's segment-level memory (``model.memory``,
        e.g. Transformer-XL's ``xl_memory``): input_ids (B, n); memory from ``init_memory`` or
        the previous call (None: empty). Returns ModelOutput whose ``state`` is the memory for
        the next segment."""
        return self._segment_memory()(self, input_ids, memory, attention_mask)

    def _segment_memory(self):
        if self.memory is None:
            from ..errors import ConfigError
            raise ConfigError("model.memory", None, MEMORIES.names(),
                              why="forward_segment needs a segment memory; set model.memory")
        return self.memory

    @classmethod
    def from_config(cls, source=None, **overrides) -> "LanguageModel":
        return cls(model_config(source, **overrides))
