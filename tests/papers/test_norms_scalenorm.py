"""Transformers without Tears (Nguyen & Salazar, 2019): ScaleNorm g·x/‖x‖ with g learned and
initialised to √d, FixNorm r·x/‖x‖ with r fixed, used with pre-norm residuals."""
import math

import pytest
import torch

import tevo
from tiny import make_norm


def test_scalenorm_and_fixnorm_formulas():
    x = torch.randn(3, 7, 16) * 4 + 1
    sn, fn = make_norm("scalenorm"), make_norm("fixnorm")
    assert sn.g.item() == pytest.approx(math.sqrt(16))           # §3.2: g initialised to √d
    assert [p for p in fn.parameters()] == []                    # FixNorm: nothing learned
    with torch.no_grad():
        sn.g.fill_(2.5)
    norm = torch.sqrt((x ** 2).sum(-1, keepdim=True))
    torch.testing.assert_close(sn(x), 2.5 * x / norm)
    torch.testing.assert_close(fn(x), x / norm)
    torch.testing.assert_close(tevo.build("norm", {"name": "fixnorm", "radius": 3.0},
                                          d_model=16)(x), 3 * x / norm)
    # one scalar for the whole vector: ‖y‖ = g, and positive rescaling of x changes nothing
    torch.testing.assert_close(sn(x).norm(dim=-1), torch.full((3, 7), 2.5))
    torch.testing.assert_close(sn(7.0 * x), sn(x))
    assert torch.equal(sn(torch.zeros(1, 16)), torch.zeros(1, 16))   # eps clamp: no NaN at 0
    with pytest.raises(tevo.ConfigError):
        tevo.build("norm", {"name": "fixnorm", "radius": 0}, d_model=16)


def test_prenorm_scalenorm_model_learns():
    """PreNorm + ScaleNorm (the paper's configuration) trains: the loss of a tiny LM falls."""
    torch.manual_seed(0)
    model = tevo.build_model({"arch": "gpt", "vocab_size": 16, "d_model": 32, "n_layers": 2,
                              "max_len": 16, "norm": "scalenorm", "residual": "pre_ln",
                              "mixer": {"name": "softmax", "heads": 4}})
    assert sum(type(m).__name__ == "ScaleNorm" for m in model.modules()) == 5
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ids = torch.arange(16).repeat(8, 1) % 4                      # a periodic sequence
    losses = []
    for _ in range(40):
        logits = model(ids[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 16), ids[:, 1:].reshape(-1))
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
