"""SOFT: with m = n landmarks the Nyström form equals exact Gaussian-kernel attention
exp(−‖q_i − q_j‖²/2√d) V (Q = K, no softmax), with the exact or the Newton pseudo-inverse."""
import torch

from tiny import make_mixer
from papers.linear_reference import assert_rel_close, ctx


def _gaussian_reference(m, x):
    B, n, _ = x.shape
    h, e = m.heads, m.head_dim
    q = m.q_proj(x).view(B, n, h, e).transpose(1, 2)
    v = m.v_proj(x).view(B, n, h, e).transpose(1, 2)
    d2 = ((q[..., :, None, :] - q[..., None, :, :]) ** 2).sum(-1)
    S = torch.exp(-d2 / (2 * e ** 0.5))
    return m.o_proj((S @ v).transpose(1, 2).reshape(B, n, h * e))


def test_landmarks_equal_n_is_exact_gaussian_attention():
    n = 8
    m = make_mixer("soft", False, landmarks=n, pinv_method="exact").double()
    x = torch.randn(2, n, 16, dtype=torch.float64)
    assert_rel_close(m(x, ctx(x, False))[0], _gaussian_reference(m, x), 1e-7)
    with torch.no_grad():                         # well-separated points: Newton converges fast
        m.q_proj.weight.mul_(4)
    m.pinv_method, m.pinv_iters = "newton", 60
    assert_rel_close(m(x, ctx(x, False))[0], _gaussian_reference(m, x), 1e-6)


def test_soft_shares_queries_and_keys_and_has_no_softmax():
    m = make_mixer("soft", False)
    assert not hasattr(m, "k_proj")
    with torch.no_grad():
        m.v_proj.weight.mul_(2)
        m.v_proj.bias.mul_(2)
        m.o_proj.bias.zero_()
    x = torch.randn(1, 8, 16)
    y2, _ = m(x, ctx(x, False))
    with torch.no_grad():
        m.v_proj.weight.mul_(0.5)
        m.v_proj.bias.mul_(0.5)
    y1, _ = m(x, ctx(x, False))
    assert_rel_close(y2, 2 * y1, 1e-5)            # linear in V: no normalisation by weights
