"""What every parameter-efficient fine-tuning method offers (PaFi, HiWi, MEFT, LoRA): its
trainable parameters, the delta to save (named tensors), loading a delta with a one-line error
when it does not fit, and (per method) merging into plain weights."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError


class PeftMethod:
    """What every PEFT method offers: the trainable parameters, the delta to save, loading a
    delta, and merging into plain weights."""

    name = "peft"

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.delta_parameters()]

    def delta_parameters(self) -> list[tuple[str, nn.Parameter]]:
        raise NotImplementedError

    def delta_state(self) -> dict[str, Tensor]:
        """The trainable delta (and what locates it), as named tensors."""
        return {k: p.detach().clone() for k, p in self.delta_parameters()}

    def load_delta(self, state: dict[str, Tensor]) -> None:
        own = dict(self.delta_parameters())
        missing = sorted(set(own) - set(state))
        extra = sorted(set(state) - set(own))
        if missing or extra:
            raise ConfigError("peft.delta", (missing or extra)[0],
                              why=f"the delta does not fit this {self.name} model "
                                  f"(missing {missing[:3]}, unexpected {extra[:3]})")
        for k, p in own.items():
            if state[k].shape != p.shape:
                raise ConfigError("peft.delta", k, why=f"{k} has shape {tuple(state[k].shape)}"
                                                       f", this model {tuple(p.shape)}")
        with torch.no_grad():
            for k, p in own.items():
                p.copy_(state[k])

    def _freeze_all(self, model):
        for p in model.parameters():
            p.requires_grad_(False)
