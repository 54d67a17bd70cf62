"""Swin V2 scaled cosine attention: scores = cos(q, k)/τ, bounded by the clamped temperature."""
import math

import torch
import torch.nn.functional as F

from tevo.nn.context import MixerContext
from tiny import make_mixer


def _naive(m, x, causal):
    B, n, _ = x.shape
    sp = lambda t: t.view(B, n, m.heads, -1).transpose(1, 2)
    q, k, v = sp(m.q_proj(x)), sp(m.k_proj(x)), sp(m.v_proj(x))
    cos = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-1, -2)
    scale = torch.clamp(m.log_scale, max=math.log(100.0)).exp()       # Swin V2's clamp
    s = cos * scale
    if causal:
        s = s.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    y = s.softmax(-1) @ v
    return m.o_proj(y.transpose(1, 2).reshape(B, n, -1)), cos * scale


def test_cosine_scores_bounded_by_temperature():
    m = make_mixer("cosine", False, heads=2, impl="eager")
    with torch.no_grad():
        m.log_scale[0] = math.log(1e4)              # τ = 1e-4 < τ_min: clamped to 0.01
        m.log_scale[1] = math.log(5.0)              # τ = 0.2
    x = torch.randn(2, 9, 16) * 100                 # huge inputs: cosine stays in [-1, 1]
    for causal in (False, True):
        y, _ = m(x, MixerContext(causal=causal))
        ref, scores = _naive(m, x, causal)
        torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-4)
    bound = torch.tensor([100.0, 5.0]).view(2, 1, 1)
    assert (scores.abs() <= bound + 1e-3).all()
    assert torch.allclose(scores.abs().amax((0, 2, 3)), bound.flatten(), rtol=0.2)  # reached


def test_cosine_fused_equals_eager():
    a = make_mixer("cosine", True, heads=2, impl="eager")
    b = make_mixer("cosine", True, heads=2, impl="sdpa")
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 8, 16)
    torch.testing.assert_close(a(x, MixerContext(causal=True))[0], b(x, MixerContext(causal=True))[0],
                               atol=1e-5, rtol=1e-4)
