"""Skyformer: with every point of [Q; K] a landmark and no ridge, the symmetric Nyström
approximation is exactly κ(Q, K)V; otherwise it equals the reference formula."""
import torch

from tiny import make_mixer
from papers.linear_reference import assert_rel_close, ctx


def _qkv(m, x):
    B, n, _ = x.shape
    h, e = m.heads, m.head_dim
    q, k, v = (p(x).view(B, n, h, e).transpose(1, 2) for p in (m.q_proj, m.k_proj, m.v_proj))
    return q * e ** -0.25, k * e ** -0.25, v


def _kappa(a, b):
    return torch.exp(-((a[..., :, None, :] - b[..., None, :, :]) ** 2).sum(-1) / 2)


def test_all_points_as_landmarks_is_exact():
    n = 6
    m = make_mixer("skyformer", False, landmarks=2 * n, ridge=0.0, pinv_method="exact").double()
    x = torch.randn(2, n, 16, dtype=torch.float64)
    q, k, v = _qkv(m, x)
    ref = m.o_proj((_kappa(q, k) @ v).transpose(1, 2).reshape(2, n, -1))
    assert_rel_close(m(x, ctx(x, False))[0], ref, 1e-7)


def test_equals_reference_formula_with_ridge():
    n, lm, ridge = 8, 4, 0.1
    m = make_mixer("skyformer", False, landmarks=lm, ridge=ridge, pinv_method="exact").double()
    x = torch.randn(2, n, 16, dtype=torch.float64)
    q, k, v = _qkv(m, x)
    S = torch.cat([q.view(2, 2, 2, 4, -1).mean(3), k.view(2, 2, 2, 4, -1).mean(3)], 2)
    C = _kappa(S, S) + ridge * torch.eye(lm, dtype=torch.float64)
    ref = _kappa(q, S) @ torch.linalg.inv(C) @ _kappa(S, k) @ v
    ref = m.o_proj(ref.transpose(1, 2).reshape(2, n, -1))
    assert_rel_close(m(x, ctx(x, False))[0], ref, 1e-7)
