"""Bidirectional encoder with MLM and NSP heads (BERT).

Paper: BERT: Pre-training of Deep Bidirectional Transformers (Devlin et al., 2019), §3:
input = token + segment + position embeddings (→ LayerNorm); post-LN blocks; MLM head
transform (dense, GELU, LayerNorm) then the tied word-embedding decoder with its own bias;
NSP from the pooled [CLS] vector (dense + tanh).
Complexity: L × (mixer + O(n d²)).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import InputError
from ..ffn.activations import activation
from ..nn.context import MixerContext, positions_from_mask
from ..registry import MODELS
from .block import BlockStack
from .common import ModelOutput, build_norm, build_position, check_ids, init_weights


@MODELS.register(
    "bert", paper="BERT: Pre-training of Deep Bidirectional Transformers for Language "
                  "Understanding (Devlin et al., 2019)",
    equation="§3: E = E_tok + E_seg + E_pos; MLM: softmax(LN(gelu(hW))E_tok^T + b); NSP: tanh(h_[CLS]W)",
    complexity=("L·(mixer + O(n d²))", "L·O(n d)"),
    test="tests/papers/test_models.py::test_bert_mlm_head_is_tied_and_padding_invariant")
class Encoder(nn.Module):
    """Bidirectional encoder; MLM logits, NSP logits and pooled output."""

    default_causal = False
    has_decoder = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.causal = cfg.causal if cfg.causal is not None else False
        self.embed = nn.Embedding(cfg.vocab_size, d)
        self.segment = nn.Embedding(cfg.n_segments, d) if cfg.n_segments else None
        self.pos = build_position(cfg)
        self.emb_norm = build_norm(cfg) if cfg.embedding_norm else None
        # a dense map of the normalised embeddings (FNet's embedding projection, Lee-Thorp et
        # al., 2021); off unless model.extra.embedding_projection is true
        self.emb_proj = nn.Linear(d, d) if (cfg.extra or {}).get("embedding_projection") else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = self.build_blocks(cfg)
        use_final = cfg.final_norm if cfg.final_norm is not None else self.blocks.final_norm
        self.norm = build_norm(cfg) if use_final else None
        act = cfg.extra.get("mlm_activation", "gelu")
        self.mlm_transform = nn.Sequential(nn.Linear(d, d), activation(act), build_norm(cfg))
        self.head = nn.Linear(d, cfg.vocab_size, bias=True)
        self.pooler = nn.Linear(d, d)
        self.nsp = nn.Linear(d, 2)
        init_weights(self, cfg, cfg.n_layers)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight

    def build_blocks(self, cfg: ModelConfig) -> nn.Module:
        """The layer stack; architectures with other stacks (Funnel) override it."""
        return BlockStack(cfg, self.causal)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, positions: Tensor | None = None,
                state=None, return_hidden: bool = True, attn_mask: Tensor | None = None,
                predict: Tensor | None = None) -> ModelOutput:
        """input_ids (B, n); ``attn_mask`` (B|1, n, n) bool: an extra attention pattern
        (``MixerContext.attn_mask``); ``predict`` (B, n) bool: run the MLM head only at these
        positions (sparse prediction), logits then (N_predict, V)."""
        h, ctx = self.encode_hidden(input_ids, attention_mask, token_type_ids, positions,
                                    attn_mask)
        hp = h if predict is None else h[predict.bool()]             # (B, n, d) | (N, d)
        logits = self.head(self.mlm_transform(hp))                   # (B, n, V) | (N, V)
        pooled = torch.tanh(self.pooler(h[:, 0]))                    # (B, d)
        return ModelOutput(logits, None, ctx.aux_loss(), h,
                           {"nsp_logits": self.nsp(pooled), "pooled": pooled, "aux": ctx.aux})

    def encode_hidden(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                      token_type_ids: Tensor | None = None, positions: Tensor | None = None,
                      attn_mask: Tensor | None = None) -> tuple[Tensor, MixerContext]:
        """The final hidden states (B, n, d) and the layers' context (positions, aux losses),
        before any output head."""
        check_ids(input_ids, self.cfg.vocab_size)
        B, n = input_ids.shape
        mask = None if attention_mask is None else attention_mask.bool()
        if positions is None and (self.cfg.extra or {}).get("positions_skip_padding") \
                and self.cfg.pad_id is not None:
            # RoBERTa numbers tokens from the padding ids (fairseq make_positions): real token
            # i gets the count of non-padding tokens before it, so left padding shifts nothing
            positions = positions_from_mask(input_ids != self.cfg.pad_id, n)
        if positions is None:
            positions = torch.arange(n, device=input_ids.device).unsqueeze(0).expand(B, n)
        x = self.embed(input_ids)
        if self.segment is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            check_ids(token_type_ids, self.cfg.n_segments, "token_type_ids")
            x = x + self.segment(token_type_ids)
        elif token_type_ids is not None:
            raise InputError("token_type_ids given but the model has no segment embeddings "
                             "(set model.n_segments)")
        if "input" in self.pos.hooks:
            x = self.pos.embed(x, positions)
        if self.emb_norm is not None:
            x = self.emb_norm(x)
        if self.emb_proj is not None:
            x = self.emb_proj(x)
        x = self.drop(x)
        ctx = MixerContext(causal=self.causal, key_padding_mask=mask, positions=positions,
                           pos=self.pos, attn_mask=attn_mask)
        h, _ = self.blocks(x, ctx)
        if self.norm is not None:
            h = self.norm(h)
        return h, ctx
