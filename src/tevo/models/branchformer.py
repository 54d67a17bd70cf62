"""Branchformer: a global (attention) branch and a local (cgMLP) branch in parallel, merged.

Paper: Branchformer: Parallel MLP-Attention Architectures to Capture Local and Global Context
for Speech Recognition and Understanding (Peng, Dalmia, Lane, Watanabe, ICML 2022), §3, eq. 1–9:

    Y_att = Attn(LN_1(X)),   Y_mlp = cgMLP(LN_2(X))                   (two branches)
    concat:  X' = X + Drop(W_m [Y_att ; Y_mlp])                          (W_m: 2d → d)
    learned: w_i = softmax_i(a_i),  a_i = wᵀ Σ_t softmax_t(Y_i p_i)_t Y_{i,t}   (attention pooling)
             X' = X + Drop(W_m (w_att Y_att + w_mlp Y_mlp))               (W_m: d → d)

The global branch is any registered mixer (``model.mixer``, softmax by default); the local one
is ``cgmlp`` (``tevo.mixers.mlp.cgmlp``) with ``model.extra: {cgmlp_mult, cgmlp_kernel}``. The
learned merge pools over the whole sequence, so it is bidirectional only (the paper's encoder);
causal models use the concatenation merge and decode with both branches' states. Branchformer
has no separate feed-forward: each block is the two branches and the merge. Padded positions
are excluded from the pooling.

Complexity per layer: the mixer's + O(n d d_ff + n k d_ff) for cgMLP + O(n d²) for the merge.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import ModelConfig, layer_specs
from ..errors import ConfigError
from ..nn.context import MixerContext
from ..registry import MODELS, NORMS
from .block import BlockStack, build_mixer
from .common import extra_options
from .lm import LanguageModel

OPTIONS = {"merge": ("concat", ("concat", "learned")), "cgmlp_mult": (6.0, float, 1e-6, None),
           "cgmlp_kernel": (31, int, 1, None)}


class BranchformerLayer(nn.Module):
    """X + Drop(W_m · merge(Attn(LN₁ X), cgMLP(LN₂ X)))."""

    def __init__(self, spec: dict, cfg: ModelConfig, layer: int, n_layers: int, causal: bool,
                 opts: dict):
        super().__init__()
        d = cfg.d_model
        self.merge = opts["merge"]
        self.norm_att = NORMS.build(spec["norm"], "model.norm", d_model=d)
        self.norm_mlp = NORMS.build(spec["norm"], "model.norm", d_model=d)
        self.att = build_mixer(spec["mixer"], d, cfg, causal, layer, n_layers)
        self.mlp = build_mixer({"name": "cgmlp", "mult": opts["cgmlp_mult"],
                                "kernel": opts["cgmlp_kernel"]}, d, cfg, causal, layer,
                               n_layers, "model.extra.cgmlp")
        if self.merge == "learned":
            self.pool = nn.ModuleList(nn.Linear(d, 1) for _ in range(2))   # p_att, p_mlp
            self.score = nn.Linear(d, 1)                                    # w
            self.merge_proj = nn.Linear(d, d)
        else:
            self.merge_proj = nn.Linear(2 * d, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.causal = causal

    final_norm = True                  # pre-LN branches: the model ends with a norm

    def init_state(self, batch: int, device=None, dtype=None) -> dict:
        return {"att": self.att.init_state(batch, device, dtype),
                "mlp": self.mlp.init_state(batch, device, dtype)}

    def merge_weights(self, ys: list[Tensor], mask: Tensor | None) -> Tensor:
        """(B, 2): softmax over the branches of wᵀ(attention-pooled branch output)."""
        scores = []
        for y, p in zip(ys, self.pool):
            a = p(y).squeeze(-1)                                     # (B, n)
            if mask is not None:
                a = a.masked_fill(~mask, float("-inf"))
            pooled = (a.softmax(-1).unsqueeze(-1) * y).sum(1)        # (B, d)
            scores.append(self.score(pooled))                         # (B, 1)
        return torch.cat(scores, -1).softmax(-1)

    def forward(self, x: Tensor, ctx: MixerContext, state: dict | None = None):
        s = state or {}
        y_att, st_att = self.att(self.norm_att(x), ctx.replace(causal=self.causal),
                                 s.get("att"))
        y_mlp, st_mlp = self.mlp(self.norm_mlp(x), ctx.replace(causal=self.causal),
                                 s.get("mlp"))
        if self.merge == "learned":
            w = self.merge_weights([y_att, y_mlp], ctx.query_mask(x.shape[1]))   # (B, 2)
            y = w[:, 0, None, None] * y_att + w[:, 1, None, None] * y_mlp
        else:
            y = torch.cat([y_att, y_mlp], -1)                         # (B, n, 2d)
        x = x + self.drop(self.merge_proj(y))
        return x, (None if state is None else {"att": st_att, "mlp": st_mlp})


class BranchformerStack(BlockStack):
    """L Branchformer layers; BlockStack's forward and state (a list of layer states)."""

    def __init__(self, cfg: ModelConfig, causal: bool):
        nn.Module.__init__(self)
        opts = extra_options(cfg, "branchformer", OPTIONS)
        if causal and opts["merge"] == "learned":
            raise ConfigError("model.extra.merge", "learned", ["concat"],
                              why="the learned merge pools over the whole sequence: "
                                  "bidirectional models only (model.causal=false)")
        specs = layer_specs(cfg, cfg.n_layers)
        self.blocks = nn.ModuleList(BranchformerLayer(specs[i], cfg, i, cfg.n_layers, causal,
                                                      opts) for i in range(cfg.n_layers))


@MODELS.register(
    "branchformer", paper="Branchformer: Parallel MLP-Attention Architectures to Capture Local "
                          "and Global Context (Peng et al., 2022)",
    equation="eq. 1-9: X' = X + W_m·merge(Attn(LN X), cgMLP(LN X)); merge = concat or "
             "attention-pooled softmax weights",
    complexity=("L·(mixer + O(n d d_ff + n k d_ff + n d²))", "L·(mixer state + (k−1) d_ff)"),
    test="tests/papers/test_models_branchformer.py::"
         "test_a_layer_is_the_papers_merge_of_its_two_branches",
    tiny={"mixer": {"name": "softmax", "heads": 2}, "position": "rope",
          "extra": {"cgmlp_mult": 2.0, "cgmlp_kernel": 3}})
class BranchformerLM(LanguageModel):
    """Language model whose layers are Branchformer layers (attention ∥ cgMLP, merged)."""

    def build_blocks(self, cfg: ModelConfig) -> nn.Module:
        return BranchformerStack(cfg, self.causal)
