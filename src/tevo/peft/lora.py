"""LoRA through Hugging Face ``peft``: the baseline users expect, not a re-implementation.

Paper: LoRA: Low-Rank Adaptation of Large Language Models (Hu et al., ICLR 2022), §4.1:

    h = W_0 x + (α / r) · B A x,    A ∈ R^{r×k} (random), B ∈ R^{d×r} (zero at start)

applied by ``peft.inject_adapter_in_model`` to the tevo projections named in ``targets``
(default the attention's q_proj and v_proj, the paper's choice); only A and B train. Merging
(``LoraLayer.merge``) writes W_0 + (α/r)·B A into the weights and the LoRA layers are replaced by
their base nn.Linear, so the merged model is the base architecture.
Needs the optional extra ``peft`` (``pip install tevo[peft]``); without it, a one-line error.
Complexity: training adds r·(d_in + d_out) parameters and two thin matmuls per target; merged:
the base model.
"""
from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from ..options import Option
from ..registry import PEFT
from .base import PeftMethod


@PEFT.register(
    "lora", paper="LoRA: Low-Rank Adaptation of Large Language Models (Hu et al., 2022), via "
                  "Hugging Face peft",
    equation="§4.1: h = W_0 x + (α/r)·B A x, B = 0 at start; merged W = W_0 + (α/r)·B A",
    complexity=("+ 2 rank-r matmuls per target; merged: the base model",
                "r·(d_in + d_out) per target"),
    test="tests/papers/test_peft_lora.py::test_lora_through_peft_trains_only_A_B_and_merges",
    options={"rank": Option(ge=1), "alpha": Option(gt=0), "dropout": Option(ge=0, lt=1)})
class LoRA(PeftMethod):
    """Low-rank adapters on the named projections, from the ``peft`` library."""

    name = "lora"

    def __init__(self, model: nn.Module, rank: int = 8, alpha: float = 16.0,
                 targets: tuple = ("q_proj", "v_proj"), dropout: float = 0.0):
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ConfigError("peft.rank", rank, why=f"must be an integer >= 1, got {rank!r}")
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ImportError:
            raise ConfigError("peft", "lora", why="LoRA comes from the peft library: "
                                                  "pip install 'tevo[peft]'") from None
        targets = [targets] if isinstance(targets, str) else list(targets)
        names = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        if not set(targets) & names:
            raise ConfigError("peft.targets", targets, sorted(names),
                              why=f"no projection named {targets} in the model")
        for p in model.parameters():
            p.requires_grad_(False)
        cfg = LoraConfig(r=rank, lora_alpha=float(alpha), lora_dropout=float(dropout),
                         target_modules=[t for t in targets if t in names])
        self.model = inject_adapter_in_model(cfg, model)
        for n, p in self.model.named_parameters():
            p.requires_grad_("lora_" in n)

    def delta_parameters(self):
        return [(n, p) for n, p in self.model.named_parameters() if "lora_" in n]

    def merge(self) -> nn.Module:
        """W_0 + (α/r)·B A into each target; LoRA layers replaced by their base nn.Linear."""
        from peft.tuners.lora import LoraLayer
        for parent in list(self.model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, LoraLayer):
                    child.merge()
                    setattr(parent, name, child.get_base_layer())
        return self.model
