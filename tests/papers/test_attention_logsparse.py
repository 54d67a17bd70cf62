"""LogSparse attention: the attended cells are exactly the paper's pattern; the gathered form
equals dense attention under that boolean mask; keys per query grow as log n."""
import math

import torch

from tevo.mixers.attention.logsparse import logsparse_distances
from tevo.nn.attention import eager_attention
from tevo.nn.context import MixerContext
from tiny import make_mixer


def _paper_mask(n, causal=True, local=0):
    """I_l = {l} ∪ {l − 2^j : j = 0..⌊log₂ l⌋} (+ local window), written as the paper states it."""
    m = torch.zeros(n, n, dtype=torch.bool)
    for l in range(n):
        m[l, l] = True
        if l > 0:
            for j in range(int(math.floor(math.log2(l))) + 1):
                m[l, l - 2 ** j] = True
        for w in range(local):
            if l - w >= 0:
                m[l, l - w] = True
    return m if causal else (m | m.t())


def test_logsparse_mask_matches_the_paper_pattern():
    n = 20
    for causal, local in ((True, 0), (True, 3), (False, 0)):
        m = make_mixer("logsparse", causal, d=2 * n, heads=2, local=local)
        x = torch.randn(1, n, 2 * n)
        ctx = MixerContext(causal=causal)
        q, k, _, _ = m.project(x, ctx, None)
        eye = torch.eye(n).expand(1, 2, n, n)             # values = one-hot: output = weights
        w = m.attend_full(q, k, eye, torch.ones(1, n, dtype=torch.bool), ctx)
        assert torch.equal(w[0, 0] > 0, _paper_mask(n, causal, local))
        assert torch.equal(w[0, 1] > 0, _paper_mask(n, causal, local))


def test_logsparse_equals_dense_attention_with_the_boolean_mask():
    n = 16
    for causal in (True, False):
        m = make_mixer("logsparse", causal, heads=2, kernel=3)
        x = torch.randn(2, n, 16)
        ctx = MixerContext(causal=causal)
        q, k, v, _ = m.project(x, ctx, None)
        ref = eager_attention(q, k, v, mask=_paper_mask(n, causal)[None, None])
        y = m.attend_full(q, k, v, torch.ones(2, n, dtype=torch.bool), ctx)
        torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-4)


def test_logsparse_keys_per_query_grow_logarithmically_and_conv_is_causal():
    assert len(logsparse_distances(1024)) == 11           # 0, 1, 2, ..., 512
    assert len(logsparse_distances(2 ** 20)) == 21
    m = make_mixer("logsparse", True, heads=2, kernel=4)
    x = torch.randn(1, 10, 16)
    q, k, _, _ = m.project(x, MixerContext(causal=True), None)
    x2 = x.clone()
    x2[:, 6:] += 1.0
    q2, k2, _, _ = m.project(x2, MixerContext(causal=True), None)
    torch.testing.assert_close(q2[:, :, :6], q[:, :, :6])  # kernel 4: q_t sees x_{t-3..t}
    assert not torch.allclose(q2[:, :, 6], q[:, :, 6])
