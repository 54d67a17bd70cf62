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
