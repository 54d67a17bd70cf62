"""HyperMixer (Mai et al., 2023): y = W₂ GELU(W₁ᵀ X) with W_k = h_k(X) generated per token;
permuting the tokens permutes the output (no fixed n × n weights), and padding adds nothing."""
import torch
import torch.nn.functional as F

from tevo.nn.context import MixerContext
from tevo.registry import MIXERS


def test_hypermixer_formula_and_permutation_equivariance():
    torch.manual_seed(0)
    d, n = 8, 9
    m = MIXERS.build({"name": "hypermixer", "hidden": 5}, d_model=d)
    x = torch.randn(2, n, d)
    y, _ = m(x, MixerContext())
    for b in range(2):                           # the equation, one sample at a time
        W1, W2 = m.h1(x[b]), m.h2(x[b])                               # (n, d')
        torch.testing.assert_close(y[b], W2 @ F.gelu(W1.T @ x[b]))
    perm = torch.randperm(n)
    yp, _ = m(x[:, perm], MixerContext())
    torch.testing.assert_close(yp, y[:, perm], atol=1e-5, rtol=1e-5)
    # not a per-token map: changing one token changes the others
    x2 = x.clone()
    x2[:, 0] += 1
    y2, _ = m(x2, MixerContext())
    assert not torch.allclose(y2[:, 1:], y[:, 1:])
