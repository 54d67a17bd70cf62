"""Understanding the Difficulty of Training Transformers (Admin, Liu et al., 2020): post-LN with
the shortcut rescaled by ω, profiled at initialisation (Algorithm 1) so that the output change
caused by a parameter perturbation no longer grows linearly with depth."""
import copy
import math

import pytest
import torch

import tevo
from tevo.registry import MODELS
from tevo.residuals.admin import AdminResidual
from tevo.residuals.init import admin_init


def _model(n_layers, **kw):
    """A post-LN encoder in the paper's setting: unit-variance (normalised) embeddings and
    Xavier-initialised sublayers, so every residual branch has O(1) output variance."""
    torch.manual_seed(0)
    cfg = tevo.model_config({"arch": "bert", "vocab_size": 64, "d_model": 32,
                             "n_layers": n_layers, "max_len": 32, "residual": "admin",
                             "embedding_norm": True, "mixer": {"name": "softmax", "heads": 4},
                             **kw})
    model = MODELS.get("bert").obj(cfg).eval()
    for m in model.blocks.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.xavier_normal_(m.weight)
    return model, cfg


@torch.no_grad()
def _output_change(model, ids, eps=0.01):
    """‖F(x, W) − F(x, W + δ)‖ / ‖F(x, W)‖ for a small random δ on every block matrix."""
    h0 = model(ids, return_hidden=True).hidden
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    for name, p in other.blocks.named_parameters():
        if p.dim() == 2:
            p.add_(torch.randn(p.shape, generator=g) * eps * p.std())
    h1 = other(ids, return_hidden=True).hidden
    return ((h1 - h0).norm() / h0.norm()).item()


def test_admin_profiling_bounds_output_change():
    ids = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(0))
    # with ω = 1 the scheme is post-LN exactly
    model, cfg = _model(2)
    post = tevo.build_model(dict(tevo.config.to_dict(cfg), residual="post_ln")).eval()
    post.load_state_dict({k: v for k, v in model.state_dict().items() if "omega" not in k})
    torch.testing.assert_close(post(ids).logits, model(ids).logits)

    changes = {}
    for L in (2, 24):
        model, cfg = _model(L)
        before = _output_change(model, ids)
        admin_init(model, cfg)                                 # Algorithm 1: one profiling pass
        omegas = [r.omega for b in model.blocks.blocks for r in b.residuals]
        assert all(bool((o == o[0]).all()) for o in omegas)   # one value per residual
        w = [o[0].item() for o in omegas]
        assert w[0] == 1.0 and all(b >= a for a, b in zip(w, w[1:])) and w[-1] > 1 + L / 12
        assert all(r.profile is None for b in model.blocks.blocks for r in b.residuals)
        changes[L] = (before, _output_change(model.eval(), ids))
    # post-LN's output change grows with depth; Admin's is much smaller at depth
    assert changes[24][0] > 2.5 * changes[2][0]
    assert changes[24][1] < 0.6 * changes[24][0]


def test_admin_closed_forms_and_config_path():
    model, cfg = _model(3)
    n = 6                                                      # residual sublayers in the stack
    for scale, omega2 in (("O(n)", 1.0), ("O(logn)", (n + 1) / math.log(n + 1) - 1),
                          ("O(1)", float(n))):
        admin_init(model, cfg, output_change_scale=scale)
        for m in model.modules():
            if isinstance(m, AdminResidual):
                assert m.omega[0].item() == pytest.approx(math.sqrt(omega2))
    with pytest.raises(tevo.ConfigError):
        admin_init(model, cfg, output_change_scale="O(n^2)")
    # through the config: `init: admin` profiles once when the model is built
    m = tevo.build_model({"arch": "transformer", "vocab_size": 30, "d_model": 32, "n_layers": 2,
                          "max_len": 16, "residual": "admin", "init": "admin",
                          "mixer": {"name": "softmax", "heads": 4}})
    for stack in (m.encoder, m.decoder):
        w = [r.omega[0].item() for b in stack.blocks for r in b.residuals]
        assert w[0] == 1.0 and w[-1] != 1.0                   # each stack starts at ratio 1
    with pytest.raises(tevo.ConfigError):
        tevo.build_model({"arch": "gpt", "vocab_size": 30, "d_model": 32, "n_layers": 1,
                          "max_len": 16, "init": "admin"})     # needs residual: admin
