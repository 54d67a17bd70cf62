"""Heads that a converted checkpoint has and tevo's architectures do not, kept beside the tevo
body so the converted model computes what the original computes.

``ModelWithHead(body, head)`` runs the tevo model and applies ``head`` to its last hidden
states: ``out.logits`` become the head's output, the body's own logits move to
``out.extra["body_logits"]``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ffn.activations import activation as build_activation

HEADS: dict[str, type] = {}


def head(name: str):
    def deco(cls):
        HEADS[name] = cls
        cls.head_name = name
        return cls
    return deco


@head("replaced_token_detection")
class ReplacedTokenDetectionHead(nn.Module):
    """ELECTRA's discriminator (Clark et al., 2020, §2): p(replaced | x_t) = σ(w·act(W h_t)),
    one logit per token."""

    def __init__(self, d_model: int, activation: str = "gelu"):
        super().__init__()
        self.options = {"d_model": d_model, "activation": activation}
        self.dense = nn.Linear(d_model, d_model)
        self.act = build_activation(activation)
        self.dense_prediction = nn.Linear(d_model, 1)

    def forward(self, h: Tensor) -> Tensor:                      # (B, n, d) → (B, n)
        return self.dense_prediction(self.act(self.dense(h))).squeeze(-1)


def build_head(spec: dict) -> nn.Module:
    spec = dict(spec)
    return HEADS[spec.pop("name")](**spec)


class ModelWithHead(nn.Module):
    """A tevo model whose hidden states feed an extra head from the converted checkpoint."""

    def __init__(self, body: nn.Module, head: nn.Module):
        super().__init__()
        self.body, self.head = body, head
        self.cfg = body.cfg

    @property
    def head_spec(self) -> dict:
        return {"name": self.head.head_name, **self.head.options}

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, **kw):
        out = self.body(input_ids, attention_mask=attention_mask, return_hidden=True, **kw)
        out.extra["body_logits"] = out.logits
        h = out.hidden
        out.logits = self.head(h)
        return out

    @torch.no_grad()
    def load_head(self, sd: dict) -> None:
        self.head.load_state_dict(sd)
