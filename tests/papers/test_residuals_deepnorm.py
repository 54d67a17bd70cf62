"""DeepNet (Wang et al., 2022), Fig. 2: x_{l+1} = LN(α x_l + G(x_l)) with α, β set by the
encoder depth N and decoder depth M; β scales the Xavier init of FFN, W_v and W_o."""
import math

import pytest
import torch

import tevo
from tevo.residuals.deepnorm import DeepNormResidual, deepnorm_constants


def test_deepnorm_alpha_beta_formulas():
    # the paper's constants, written out for N = M = 6 and computed by hand
    c = deepnorm_constants(6, 6)
    assert c["encoder"] == pytest.approx((0.81 * 6 ** (5 / 16), 0.87 * 6 ** (-5 / 16)))
    assert c["encoder"] == pytest.approx((1.417938, 0.496989), abs=1e-6)
    assert c["decoder"] == pytest.approx((18 ** 0.25, 72 ** -0.25))
    assert c["decoder"] == pytest.approx((2.059767, 0.343295), abs=1e-6)
    assert deepnorm_constants(n_dec=6)["decoder"] == pytest.approx((1.861210, 0.379918), abs=1e-6)
    assert deepnorm_constants(n_enc=4)["encoder"] == pytest.approx((8 ** 0.25, 32 ** -0.25))
    assert deepnorm_constants(12, 3)["encoder"] == pytest.approx(
        (0.81 * (12 ** 4 * 3) ** (1 / 16), 0.87 * (12 ** 4 * 3) ** (-1 / 16)))
    with pytest.raises(tevo.ConfigError):
        deepnorm_constants(0, 0)

    # through models: decoder-only, encoder-only and encoder–decoder, residual + init together
    base = {"vocab_size": 40, "d_model": 64, "max_len": 16, "residual": "deepnorm",
            "init": "deepnorm", "mixer": {"name": "softmax", "heads": 4}}
    cases = [({"arch": "gpt", "n_layers": 6}, {"single": deepnorm_constants(n_dec=6)["decoder"]}),
             ({"arch": "bert", "n_layers": 4}, {"single": deepnorm_constants(n_enc=4)["encoder"]}),
             ({"arch": "transformer", "n_layers": 6, "n_dec_layers": 3},
              {"encoder": deepnorm_constants(6, 3)["encoder"],
               "decoder": deepnorm_constants(6, 3)["decoder"]})]
    for cfg, expect in cases:
        torch.manual_seed(0)
        model = tevo.build_model({**base, **cfg})
        stacks = ({"single": model.blocks} if cfg["arch"] != "transformer"
                  else {"encoder": model.encoder, "decoder": model.decoder})
        for role, stack in stacks.items():
            alpha, beta = expect[role]
            res = [r for b in stack.blocks for r in b.residuals]
            assert all(isinstance(r, DeepNormResidual) for r in res)
            assert all(r.alpha.item() == pytest.approx(alpha) for r in res)
            w = {"qk": [], "v_o_ffn": []}
            for b in stack.blocks:
                for t, sub in zip(b.layout, b.sublayers):
                    for name, m in sub.named_modules():
                        if isinstance(m, torch.nn.Linear):
                            xavier = math.sqrt(2.0 / sum(m.weight.shape))
                            key = "qk" if name.endswith(("q_proj", "k_proj")) else "v_o_ffn"
                            w[key].append(m.weight.flatten() / xavier)
            # Xavier-normal with gain 1 for q, k and gain β elsewhere (Fig. 2 pseudocode)
            assert torch.cat(w["qk"]).std().item() == pytest.approx(1.0, rel=0.05)
            assert torch.cat(w["v_o_ffn"]).std().item() == pytest.approx(beta, rel=0.05)


def test_deepnorm_residual_formula_without_init():
    r = tevo.build("residual", "deepnorm", d_model=16, n_layers=8)
    assert r.alpha.item() == pytest.approx(16 ** 0.25)          # (2N)^{1/4}, decoder-only
    x = torch.randn(2, 3, 16)
    f = torch.nn.Linear(16, 16)
    torch.testing.assert_close(r(x, f), r.norm(16 ** 0.25 * x + f(x)))
    assert not r.final_norm
