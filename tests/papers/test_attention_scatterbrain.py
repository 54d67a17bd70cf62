"""Scatterbrain: on a matrix with both local and diffuse structure, sparse + low-rank beats each
part alone; the combined matrix is exact on the sparse support; FAVOR+ features are unbiased."""
import math

import torch

from tevo.mixers.attention.scatterbrain import (log_features, orthogonal_features,
                                                 scatterbrain_attention, scatterbrain_dense)


def _test_matrix(n=64, h=4, e=16, beta=1.5, noise=0.5):
    """Periodic position features (a smooth kernel peaked at i = j) plus per-token noise."""
    i = torch.arange(n).float()[:, None] * torch.tensor([0.5, 0.25, 0.12, 0.06])
    pos = (torch.cat([i.cos(), i.sin()], -1) * beta).expand(1, h, n, 8)
    q = torch.cat([pos, noise * torch.randn(1, h, n, e - 8)], -1)
    k = torch.cat([pos, noise * torch.randn(1, h, n, e - 8)], -1)
    return q, k, torch.randn(1, h, n, e)


def test_scatterbrain_error_below_each_part():
    for trial in range(3):
        q, k, v = _test_matrix()
        n, e = q.shape[2], q.shape[3]
        omega = orthogonal_features(4, 32, e, torch.Generator().manual_seed(trial))
        for causal in (False, True):
            s = q @ k.transpose(-1, -2) / math.sqrt(e)
            if causal:
                s = s.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
            exact = s.softmax(-1) @ v
            err = {}
            for parts in (("sparse",), ("lowrank",), ("sparse", "lowrank")):
                y = scatterbrain_attention(q, k, v, omega, 3, causal, parts=parts)
                err[parts] = ((y - exact).norm() / exact.norm()).item()
            both = err[("sparse", "lowrank")]
            assert both < err[("sparse",)] and both < err[("lowrank",)], err


def test_scatterbrain_is_exact_on_the_band_and_low_rank_elsewhere():
    q, k, v = _test_matrix(n=12, h=2)
    omega = orthogonal_features(2, 16, 16, torch.Generator().manual_seed(0))
    pos = torch.arange(12).unsqueeze(0)
    eye = torch.eye(12).expand(1, 2, 12, 12)                  # values = one-hot: rows of Ã/Ã1
    W = scatterbrain_dense(q, k, eye, omega, 2, False, pos, pos, torch.ones(1, 12, dtype=torch.bool))
    A = torch.exp(q @ k.transpose(-1, -2) / 4)
    L = torch.exp(log_features(q, omega)) @ torch.exp(log_features(k, omega)).transpose(-1, -2)
    band = (torch.arange(12)[:, None] - torch.arange(12)[None, :]).abs() <= 2
    ref = torch.where(band, A, L)
    torch.testing.assert_close(W, ref / ref.sum(-1, keepdim=True), atol=1e-5, rtol=1e-4)
    # the gathered (band) form computes the same function
    Wf = scatterbrain_attention(q, k, eye, omega, 2, False)
    torch.testing.assert_close(Wf, W, atol=1e-5, rtol=1e-4)


def test_favor_features_are_unbiased():
    q, k = torch.randn(1, 1, 6, 8) * 0.5, torch.randn(1, 1, 6, 8) * 0.5
    omega = orthogonal_features(1, 4096, 8, torch.Generator().manual_seed(0))
    L = torch.exp(log_features(q, omega)) @ torch.exp(log_features(k, omega)).transpose(-1, -2)
    rel = (L / torch.exp(q @ k.transpose(-1, -2) / math.sqrt(8)) - 1).abs()
    assert rel.mean() < 0.04 and rel.max() < 0.15            # Monte-Carlo error, m = 4096
