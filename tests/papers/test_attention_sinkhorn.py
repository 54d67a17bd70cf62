"""Sinkformer: Sinkhorn-normalised attention has rows and columns summing to 1; 0 iterations is
softmax; the log-domain iterations equal the plain alternating normalisation."""
import math

import torch

from tevo.mixers.attention.sinkhorn import sinkhorn_log
from tevo.nn.context import MixerContext
from tiny import make_mixer


def test_sinkhorn_rows_and_columns_sum_to_one():
    s = torch.randn(2, 3, 7, 7) * 2
    kv = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    kv[1, ..., 5:] = False                                     # sample 1: two padded tokens
    qv = kv.transpose(-1, -2)
    p = sinkhorn_log(s, kv, qv, iters=200).exp()
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 3, 7))
    cols = (p * qv).sum(-2)                                    # real queries only
    torch.testing.assert_close(cols[0], torch.ones(3, 7), atol=1e-4, rtol=0)
    torch.testing.assert_close(cols[1, :, :5], torch.ones(3, 5), atol=1e-4, rtol=0)
    assert (p[1, :, :, 5:] == 0).all()
    # plain alternating normalisation of K = exp(S) (the paper's algorithm) gives the same matrix
    K = s[0].exp()
    K = K / K.sum(-1, keepdim=True)
    for _ in range(3):
        K = K / K.sum(-2, keepdim=True)
        K = K / K.sum(-1, keepdim=True)
    torch.testing.assert_close(sinkhorn_log(s[:1], kv[:1], qv[:1], 3).exp()[0], K)


def test_sinkhorn_zero_iterations_is_softmax_and_mixer_uses_it():
    a = make_mixer("sinkhorn", False, heads=2, iters=0)
    b = make_mixer("softmax", False, heads=2, impl="eager")
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 9, 16)
    torch.testing.assert_close(a(x, MixerContext())[0], b(x, MixerContext())[0], atol=1e-5, rtol=1e-4)
    c = make_mixer("sinkhorn", False, heads=2, iters=5)
    c.load_state_dict(a.state_dict())
    assert not torch.allclose(c(x, MixerContext())[0], a(x, MixerContext())[0], atol=1e-4)


def test_sinkhorn_mixer_equals_plain_alternating_normalisation_with_padding():
    """The mixer's output against the paper's algorithm run by hand on each sample's real tokens:
    K = exp(QKᵀ/√d), then T times columns K/(1ᵀK) and rows K/(K1) (after the initial row
    normalisation), y = K V through W^O. A mixer that normalised the wrong axis, let padded
    queries into the column sums or skipped iterations would fail."""
    torch.manual_seed(6)
    m = make_mixer("sinkhorn", False, heads=2, iters=4)
    n, e = 9, 8
    x = torch.randn(2, n, 16)
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, 6:] = False
    y, _ = m(x, MixerContext(key_padding_mask=mask))
    with torch.no_grad():
        q, k, v = (m._split(p(x), 2) for p in (m.q_proj, m.k_proj, m.v_proj))
        for b in range(2):
            r = int(mask[b].sum())
            heads = []
            for hh in range(2):
                K = (q[b, hh, :r] @ k[b, hh, :r].T / math.sqrt(e)).double().exp()
                K = K / K.sum(1, keepdim=True)
                for _ in range(4):
                    K = K / K.sum(0, keepdim=True)
                    K = K / K.sum(1, keepdim=True)
                heads.append(K.float() @ v[b, hh, :r])
            want = m.o_proj(torch.cat(heads, -1))
            torch.testing.assert_close(y[b, :r], want, atol=1e-5, rtol=1e-4)
