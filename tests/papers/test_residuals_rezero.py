"""ReZero (Bachlechner et al., 2020) and SkipInit (De & Smith, 2020): x + α·F(x) with α = 0 at
initialisation and no normalisation, so every block is exactly the identity at init."""
import pytest
import torch

import tevo


@pytest.mark.parametrize("scheme", ["rezero", "skipinit"])
def test_rezero_and_skipinit_blocks_are_identity_at_init(scheme):
    torch.manual_seed(0)
    model = tevo.build_model({"arch": "gpt", "vocab_size": 50, "d_model": 32, "n_layers": 3,
                              "max_len": 32, "residual": scheme,
                              "mixer": {"name": "softmax", "heads": 4}})
    assert model.norm is None                                 # no final norm, no norm anywhere
    assert not any("Norm" in type(m).__name__ for m in model.modules())
    ids = torch.randint(0, 50, (2, 12))
    io = []
    hooks = [b.register_forward_hook(lambda m, a, o: io.append((a[0], o[0])))
             for b in model.blocks.blocks]
    out = model(ids, return_hidden=True)
    for h in hooks:
        h.remove()
    assert len(io) == 3
    for x, y in io:
        assert torch.equal(x, y)                              # exactly the identity
    torch.testing.assert_close(out.hidden, model.pos.embed(model.embed(ids),
                                                           torch.arange(12).expand(2, 12)))
    # the scalar is learned: one step moves α off zero and the blocks off the identity
    loss = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 50),
                                             ids[:, 1:].reshape(-1))
    loss.backward()
    alphas = [r.alpha for b in model.blocks.blocks for r in b.residuals]
    assert all(a.grad is not None and a.grad.abs() > 0 for a in alphas)
    with torch.no_grad():
        for a in alphas:
            a -= 0.1 * a.grad
    io.clear()
    hooks = [b.register_forward_hook(lambda m, a, o: io.append((a[0], o[0])))
             for b in model.blocks.blocks]
    model(ids)
    assert not torch.equal(*io[0])


def test_skipinit_alpha_init_option():
    r = tevo.build("residual", {"name": "skipinit", "alpha_init": 0.25}, d_model=16)
    x = torch.randn(2, 3, 16)
    f = torch.nn.Linear(16, 16)
    torch.testing.assert_close(r(x, f), x + 0.25 * f(x))
