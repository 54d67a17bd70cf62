"""FourierFormer: equals kernel regression with the product-of-sincs kernel, computed naively;
decoding with the K/V cache equals the full pass."""
import pytest
import torch

from tiny import make_mixer
from papers.linear_reference import assert_rel_close, ctx, left_padded, prefill_then_steps


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("power", [2, 4])
def test_equals_product_sinc_kernel_regression(causal, power):
    R = 1.7
    m = make_mixer("fourier_integral", causal, radius=R, power=power).double()
    x, mask = left_padded(n=8)
    x = x.double()
    if not causal:
        mask = mask.flip(1)
    y, _ = m(x, ctx(x, causal, mask))
    B, n, _ = x.shape
    h, e = m.heads, m.head_dim
    q, k, v = (p(x).view(B, n, h, e).transpose(1, 2) for p in (m.q_proj, m.k_proj, m.v_proj))
    out = torch.zeros(B, h, n, e, dtype=torch.float64)
    for b in range(B):
        for i in range(n):
            js = [j for j in range(n) if bool(mask[b, j]) and (j <= i or not causal)]
            if not js:
                continue
            w = torch.ones(h, len(js), dtype=torch.float64)
            for t, j in enumerate(js):
                for d in range(e):
                    dlt = q[b, :, i, d] - k[b, :, j, d]
                    w[:, t] *= (torch.sin(R * dlt) / (R * dlt)) ** power
            out[b, :, i] = (w[..., None] * v[b][:, js]).sum(1) / w.sum(1, keepdim=True)
    ref = m.o_proj(out.transpose(1, 2).reshape(B, n, h * e))
    assert_rel_close(y[mask], ref[mask], 1e-9)


def test_fourier_integral_cache_decodes_exactly():
    m = make_mixer("fourier_integral", True)
    x, mask = left_padded()
    y_inc, y_full, _ = prefill_then_steps(m, x, mask)
    assert_rel_close(y_inc[mask], y_full[mask], 1e-5)
