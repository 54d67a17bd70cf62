"""softmax_plus: logits scaled by log n_i / log n_train per query (padding excluded, causal
counts), equals softmax at the training length; KV-cache decode exact."""
import math

import pytest
import torch

from tiny import make_mixer
from papers.linear_reference import assert_rel_close, ctx, left_padded, prefill_then_steps


@pytest.mark.parametrize("causal", [True, False])
def test_logits_scaled_by_log_n_over_log_train(causal):
    T = 6
    m = make_mixer("softmax_plus", causal, train_len=T)
    x, mask = left_padded(n=11)
    if not causal:
        mask = mask.flip(1)
    y, _ = m(x, ctx(x, causal, mask))
    B, n, _ = x.shape
    h, e = m.heads, m.head_dim
    q, k, v = (p(x).view(B, n, h, e).transpose(1, 2) for p in (m.q_proj, m.k_proj, m.v_proj))
    out = torch.zeros(B, h, n, e)
    for b in range(B):
        for i in range(n):
            js = [j for j in range(n) if bool(mask[b, j]) and (j <= i or not causal)]
            if not js:
                continue
            kappa = math.log(len(js)) / math.log(T)
            s = kappa * (q[b, :, i:i + 1] @ k[b, :, js].transpose(-1, -2)) / math.sqrt(e)
            out[b, :, i] = (s.softmax(-1) @ v[b, :, js])[:, 0]
    ref = m.o_proj(out.transpose(1, 2).reshape(B, n, h * e))
    assert_rel_close(y[mask], ref[mask], 1e-5)


def test_equals_softmax_at_the_training_length():
    n = 10
    sp = make_mixer("softmax_plus", False, train_len=n)
    sm = make_mixer("softmax", False)
    sm.load_state_dict(sp.state_dict())
    x = torch.randn(2, n, 16)
    assert_rel_close(sp(x, ctx(x, False))[0], sm(x, ctx(x, False))[0], 1e-6)
    y2, _ = sp(x[:, :5], ctx(x[:, :5], False))             # shorter: sharper than softmax
    assert not torch.allclose(y2, sm(x[:, :5], ctx(x[:, :5], False))[0], atol=1e-4)


def test_cache_decode_equals_full_pass():
    m = make_mixer("softmax_plus", True, train_len=8)
    x, mask = left_padded()
    y_inc, y_full, _ = prefill_then_steps(m, x, mask)
    assert_rel_close(y_inc[mask], y_full[mask], 1e-5)
