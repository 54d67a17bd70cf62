import math

import pytest
import torch

from tevo.registry import ACTIVATIONS

x = torch.linspace(-5, 5, 201, dtype=torch.float64)
Phi = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
sig = 1 / (1 + torch.exp(-x))
FORMULAS = {
    "relu": torch.where(x > 0, x, 0 * x),
    "gelu": x * Phi,
    "gelu_tanh": 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))),
    "silu": x * sig, "swish": x * sig,
    "mish": x * torch.tanh(torch.log1p(torch.exp(x))),
    "relu2": torch.where(x > 0, x, 0 * x) ** 2, "squared_relu": torch.where(x > 0, x, 0 * x) ** 2,
    "elu": torch.where(x > 0, x, torch.exp(x) - 1),
    "selu": 1.0507009873554805 * torch.where(x > 0, x, 1.6732632423543772 * (torch.exp(x) - 1)),
    "softplus": torch.log1p(torch.exp(x)),
    "sigmoid": sig, "tanh": (torch.exp(x) - torch.exp(-x)) / (torch.exp(x) + torch.exp(-x)),
    "hardswish": x * torch.clamp(x + 3, 0, 6) / 6,
    "identity": x,
    "laplace": 0.5 * (1 + torch.erf((x - math.sqrt(0.5)) / (math.sqrt(1 / (4 * math.pi)) * math.sqrt(2)))),
}


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_activation_matches_formula(name):
    a = ACTIVATIONS.build(name)
    torch.testing.assert_close(a(x.float()).double(), FORMULAS[name], atol=1e-5, rtol=1e-4)


def test_every_registered_activation_has_a_formula():
    assert set(ACTIVATIONS.names()) <= set(FORMULAS)
