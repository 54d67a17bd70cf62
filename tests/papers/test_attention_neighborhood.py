"""Neighborhood attention: matches a brute-force masked reference (1D and 2D, with the relative
position bias and padding); every query keeps exactly k (k×k) keys, windows shifted at borders;
kernel ≥ length equals softmax; O(n·k) memory in 1D."""
import pytest
import torch

from papers.attention_reference import ctx, dense_pattern_attention, largest_intermediate
from tiny import make_mixer

D = 16


def _clamp_start(i, L, k):
    """NAT: the window of k around i, shifted inwards at the borders."""
    return min(max(i - k // 2, 0), max(L - k, 0))


def _ref_1d(m, x, mask):
    B, n, _ = x.shape
    k, h = m.k, m.heads
    lengths = mask.sum(-1)
    allowed = torch.zeros(B, h, n, n, dtype=torch.bool)
    bias = torch.zeros(B, h, n, n)
    for b in range(B):
        L = int(lengths[b])
        for i in range(L):
            s = _clamp_start(i, L, k)
            for j in range(s, min(s + k, L)):
                allowed[b, :, i, j] = True
                bias[b, :, i, j] = m.rpb[:, j - i + k - 1]
    return dense_pattern_attention(m, x, allowed, mask, bias=bias)


def _ref_2d(m, x, H, W):
    B, n, _ = x.shape
    k, h = m.k, m.heads
    allowed = torch.zeros(B, h, n, n, dtype=torch.bool)
    bias = torch.zeros(B, h, n, n)
    for r in range(H):
        for c in range(W):
            sr, sc = _clamp_start(r, H, k), _clamp_start(c, W, k)
            for r2 in range(sr, min(sr + k, H)):
                for c2 in range(sc, min(sc + k, W)):
                    i, j = r * W + c, r2 * W + c2
                    allowed[:, :, i, j] = True
                    bias[:, :, i, j] = m.rpb[:, r2 - r + k - 1, c2 - c + k - 1]
    return dense_pattern_attention(m, x, allowed, None, bias=bias)


def test_matches_brute_force_masked_reference():
    for k in (1, 3, 4, 5):
        m = make_mixer("neighborhood", False, d=D, heads=2, kernel_size=k)
        with torch.no_grad():
            m.rpb.normal_()
        x = torch.randn(3, 13, D)
        mask = torch.ones(3, 13, dtype=torch.bool)
        mask[1, 9:], mask[2, 3:] = False, False              # sample 2 is shorter than k=4, 5
        y, _ = m(x, ctx(x, False, mask))
        ref, allowed = _ref_1d(m, x, mask)
        torch.testing.assert_close(y[mask], ref[mask], atol=1e-5, rtol=1e-4)
        counts = allowed[0, 0].sum(-1)                        # every query keeps exactly k keys
        assert (counts == min(k, 13)).all()


@pytest.mark.parametrize("H,W,k", [(4, 5, 3), (5, 3, 3), (3, 4, 2), (2, 3, 3)])
def test_2d_matches_brute_force_masked_reference(H, W, k):
    m = make_mixer("neighborhood", False, d=D, heads=2, kernel_size=k, width=W)
    with torch.no_grad():
        m.rpb.normal_()
    x = torch.randn(2, H * W, D)
    y, _ = m(x, ctx(x, False))
    ref, allowed = _ref_2d(m, x, H, W)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-4)
    assert (allowed[0, 0].sum(-1) == min(k, H) * min(k, W)).all()


def test_2d_with_padded_images_and_rows_check():
    from tevo.errors import InputError
    m = make_mixer("neighborhood", False, d=D, heads=2, kernel_size=3, width=4)
    x = torch.randn(2, 16, D)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[1, 12:] = False                                      # a 3-row image padded to 4 rows
    y, _ = m(x, ctx(x, False, mask))
    y1, _ = m(x[1:, :12], ctx(x[1:, :12], False))
    torch.testing.assert_close(y[1, :12], y1[0], atol=1e-5, rtol=1e-4)
    mask[1, 10:] = False                                      # 10 tokens: not whole rows
    with pytest.raises(InputError):
        m(x, ctx(x, False, mask))


def test_kernel_covering_the_sequence_without_bias_equals_softmax():
    m = make_mixer("neighborhood", False, d=D, heads=2, kernel_size=9, rpb=False)
    s = make_mixer("softmax", False, d=D, heads=2)
    s.load_state_dict(m.state_dict())
    x = torch.randn(2, 9, D)
    torch.testing.assert_close(m(x, ctx(x, False))[0], s(x, ctx(x, False))[0], atol=1e-5, rtol=1e-4)


def test_memory_grows_as_n_times_k_in_1d():
    m = make_mixer("neighborhood", False, d=D, heads=2, kernel_size=7)
    s1 = largest_intermediate(m, torch.randn(1, 512, D), False)
    s2 = largest_intermediate(m, torch.randn(1, 1024, D), False)
    assert 1.8 < s2 / s1 < 2.2 and s2 < 2 * 1024 * 1024 / 16
