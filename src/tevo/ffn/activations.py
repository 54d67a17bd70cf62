"""Activation functions (registry ``activation``); each matches its closed form in a test.

Survey: A survey on recently proposed activation functions for Deep Learning (2022).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import ACTIVATIONS

_TEST = "tests/papers/test_activations.py::test_activation_matches_formula"


def _act(name, fn, formula, paper="A survey on recently proposed activation functions (2022)"):
    cls = type(f"Act_{name}", (nn.Module,), {
        "forward": lambda self, x: fn(x), "formula": formula,
        "__doc__": f"{name}(x) = {formula}"})
    ACTIVATIONS.register(name, paper=paper, equation=formula, complexity=("O(n d)", "O(n d)"),
                         test=_TEST)(cls)
    return cls


_act("relu", F.relu, "max(0, x)")
_act("gelu", lambda x: F.gelu(x), "x·Φ(x)", "Gaussian Error Linear Units (Hendrycks & Gimpel, 2016)")
_act("gelu_tanh", lambda x: F.gelu(x, approximate="tanh"),
     "0.5x(1+tanh(√(2/π)(x+0.044715x³)))", "Gaussian Error Linear Units (Hendrycks & Gimpel, 2016)")
_act("silu", F.silu, "x·σ(x)", "Swish / SiLU (Ramachandran et al., 2017)")
_act("swish", F.silu, "x·σ(x)", "Searching for Activation Functions (Ramachandran et al., 2017)")
_act("mish", F.mish, "x·tanh(softplus(x))", "Mish (Misra, 2019)")
_act("relu2", lambda x: F.relu(x).square(), "max(0, x)²", "Primer (So et al., 2021)")
_act("squared_relu", lambda x: F.relu(x).square(), "max(0, x)²", "Primer (So et al., 2021)")
_act("elu", F.elu, "x if x>0 else exp(x)-1")
_act("selu", F.selu, "λ(x if x>0 else α(exp(x)-1)), λ≈1.0507, α≈1.6733")
_act("softplus", F.softplus, "log(1+exp(x))")
_act("sigmoid", torch.sigmoid, "1/(1+exp(-x))")
_act("tanh", torch.tanh, "tanh(x)")
_act("hardswish", F.hardswish, "x·relu6(x+3)/6", "Searching for MobileNetV3 (Howard et al., 2019)")
_act("identity", lambda x: x, "x")
_act("laplace", lambda x: 0.5 * (1.0 + torch.erf((x - 0.707107) / (0.282095 * math.sqrt(2.0)))),
     "0.5·(1+erf((x-μ)/(σ√2))), μ=√½, σ=√(1/4π)",
     "Transformer Quality in Linear Time (FLASH, Hua et al., 2022), laplace attention function")


def activation(name: str) -> nn.Module:
    """Build an activation by name (ConfigError with the choices if unknown)."""
    return ACTIVATIONS.build(name, field_name="activation")
