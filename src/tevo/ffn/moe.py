"""Mixture of experts FFN: top-1 (Switch) or top-2 (GShard) routing with a capacity limit.

Papers: Switch Transformers (Fedus, Zoph & Shazeer, 2021), §2.1–2.2, eqs. 1–6; GShard (Lepikhin
et al., 2020), §2.2 (top-2 gating); the MoE rows of "Do Transformer Modifications Transfer?"
(Narang et al., 2021).
    p(x) = softmax(W_r x)                                   router, computed in fp32 (§2.4)
    top-1: y = p_e(x)·E_e(x),  e = argmax p                 (Switch, eq. 2)
    top-2: y = Σ_{s=1,2} g_s/(g_1+g_2)·E_{e_s}(x)           (GShard, normalised top-2 gates)
    capacity C = ⌈capacity_factor · T · k / E⌉ tokens per expert (eq. 3); tokens beyond it
    are dropped: that choice contributes 0, so the residual connection carries the token
    through unchanged. First choices of all tokens are served before any second choice.
    balance loss = α · E · Σ_i f_i · P_i                    (eq. 4; f_i fraction of tokens whose
                                                            first choice is i, P_i mean p_i)
The loss goes to ``ctx.add_aux("moe_balance", ...)`` (added to the training loss); the optional
router z-loss (ST-MoE, Zoph et al., 2022, eq. 5) to "moe_z". Padding tokens (``ctx``'s key
padding mask) are not routed, take no capacity and count in no statistic.
Capacity makes a token's output depend on the other tokens of the batch, so the layer is not
position-wise; a cached decode step (one token) never drops while a full pass may — use a
generous ``eval_capacity_factor`` (or ``null``: unlimited) for exact cached decoding.
Complexity: time O(T·k·(d E + cost of one expert)), memory O(E·params of one expert).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..nn.context import MixerContext
from ..registry import FFNS, split_spec


@FFNS.register(
    "moe", paper="Switch Transformers (Fedus et al., 2021); GShard (Lepikhin et al., 2020)",
    equation="Switch eqs. 1–4: p = softmax(W_r x); y = Σ_top-k g·E(x); C = ⌈cf·T·k/E⌉, "
             "overflow dropped; aux = α·E·Σ_i f_i P_i",
    complexity=("O(T k (d E + expert))", "O(E · expert params)"),
    test="tests/papers/test_ffn_moe.py::test_top1_and_top2_routing_match_reference",
    tiny={"experts": 4, "top_k": 2, "mult": 2})
class MixtureOfExperts(nn.Module):
    """Top-1 / top-2 routed expert FFNs with capacity, token dropping and a balance loss."""

    uses_ctx = True
    position_wise = False

    def __init__(self, d_model: int, experts: int = 8, top_k: int = 1,
                 capacity_factor: float | None = 1.25, eval_capacity_factor: float | None = 2.0,
                 expert="mlp", mult: float = 4.0, activation: str = "gelu",
                 aux_weight: float = 0.01, z_loss_weight: float = 0.0, jitter: float = 0.0,
                 dropout: float = 0.0):
        super().__init__()
        if experts < 1:
            raise ConfigError("ffn.experts", experts, why="needs at least one expert")
        if top_k not in (1, 2) or top_k > experts:
            raise ConfigError("ffn.top_k", top_k, [1, 2] if experts > 1 else [1],
                              why="top_k must be 1 (Switch) or 2 (GShard) and <= experts")
        for name, cf in (("capacity_factor", capacity_factor),
                         ("eval_capacity_factor", eval_capacity_factor)):
            if cf is not None and cf <= 0:
                raise ConfigError(f"ffn.{name}", cf, why="must be > 0 (or null: no limit)")
        self.n_experts, self.top_k = experts, top_k
        self.capacity_factor, self.eval_capacity_factor = capacity_factor, eval_capacity_factor
        self.aux_weight, self.z_loss_weight, self.jitter = aux_weight, z_loss_weight, jitter
        self.router = nn.Linear(d_model, experts, bias=False)
        name, kw = split_spec(expert, "ffn.expert")
        if name == "mlp":
            kw = {"mult": mult, "activation": activation, **kw}
        self.experts = nn.ModuleList(
            FFNS.build({"name": name, **kw}, "ffn.expert", d_model=d_model, dropout=dropout)
            for _ in range(experts))
        self.last_stats: dict = {}

    def init_weights(self) -> None:
        nn.init.normal_(self.router.weight, 0.0, 0.02)

    def capacity(self, n_tokens: int) -> int | None:
        cf = self.capacity_factor if self.training else self.eval_capacity_factor
        if cf is None:
            return None
        return max(1, math.ceil(cf * n_tokens * self.top_k / self.n_experts))

    def route(self, x: Tensor, valid: Tensor):
        """x (T, d), valid (T,) → probs (T, E), experts (T, k), gates (T, k), kept (T, k)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.float()
            if self.training and self.jitter > 0:               # Switch §2.4 input jitter
                xf = xf * torch.empty_like(xf).uniform_(1 - self.jitter, 1 + self.jitter)
            logits = xf @ self.router.weight.float().T           # (T, E)
            probs = logits.softmax(-1)
        gates, experts = probs.topk(self.top_k, dim=-1)          # (T, k)
        if self.top_k == 2:
            gates = gates / gates.sum(-1, keepdim=True)
        C = self.capacity(int(valid.sum()))
        kept = valid.unsqueeze(-1).expand_as(experts).clone()
        if C is not None:
            used = torch.zeros(self.n_experts, dtype=torch.long, device=x.device)
            for s in range(self.top_k):                          # first choices first
                onehot = nn.functional.one_hot(experts[:, s], self.n_experts) * valid.unsqueeze(-1)
                pos = onehot.cumsum(0) - 1 + used                # (T, E) slot in the expert
                slot = pos.gather(1, experts[:, s:s + 1]).squeeze(1)
                kept[:, s] &= slot < C
                used = used + onehot.sum(0)
        return logits, probs, experts, gates, kept

    def forward(self, x: Tensor, ctx: MixerContext | None = None) -> Tensor:
        shape = x.shape
        xt = x.reshape(-1, shape[-1])                            # (T, d)
        T = xt.shape[0]
        mask = None if ctx is None else ctx.query_mask(shape[1])
        valid = torch.ones(T, dtype=torch.bool, device=x.device) if mask is None \
            else mask.reshape(-1).bool()
        logits, probs, experts, gates, kept = self.route(xt, valid)
        y = torch.zeros_like(xt)
        for e, expert in enumerate(self.experts):
            sel = (experts == e) & kept                          # (T, k)
            tok, slot = sel.nonzero(as_tuple=True)
            if tok.numel() == 0:
                continue
            out = expert(xt[tok])                                # (t_e, d)
            y.index_add_(0, tok, (out * gates[tok, slot].unsqueeze(-1)).to(y.dtype))
        n_valid = valid.sum().clamp(min=1)
        if ctx is not None and self.aux_weight and self.training:
            v = valid.float().unsqueeze(-1)
            f = (nn.functional.one_hot(experts[:, 0], self.n_experts) * v).sum(0) / n_valid
            P = (probs * v).sum(0) / n_valid
            ctx.add_aux("moe_balance", self.n_experts * (f * P).sum(), self.aux_weight)
        if ctx is not None and self.z_loss_weight and self.training:
            z = (torch.logsumexp(logits, -1) ** 2 * valid.float()).sum() / n_valid
            ctx.add_aux("moe_z", z, self.z_loss_weight)
        dropped = (valid.unsqueeze(-1) & ~kept).sum()
        self.last_stats = {"dropped_fraction": float(dropped) / float(n_valid * self.top_k)}
        return y.view(shape)
