"""rope_bias: RoPE on q + b_q, k + b_k, i.e. exactly RoPE after biased Q/K projections."""
import pytest
import torch

from tevo.errors import ConfigError
from tevo.positions.rope import RotaryPosition
from tevo.positions.rope_bias import RotaryBiasPosition
from tiny import ctx_for, make_mixer

TOL = dict(atol=1e-5, rtol=1e-4)


def test_rope_bias_equals_rope_with_biased_projections():
    torch.manual_seed(1)
    heads, e = 2, 8
    pe = RotaryBiasPosition(e, heads=heads)
    with torch.no_grad():
        pe.b_q.normal_()
        pe.b_k.normal_()
    a = make_mixer("softmax", True, heads=heads, bias=True, impl="eager")
    b = make_mixer("softmax", True, heads=heads, bias=True, impl="eager")
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        a.q_proj.bias.zero_()
        a.k_proj.bias.zero_()
        b.q_proj.bias.copy_(pe.b_q.flatten())
        b.k_proj.bias.copy_(pe.b_k.flatten())
    x = torch.randn(2, 11, 16)
    ya, _ = a(x, ctx_for(x, True, pos=pe))
    yb, _ = b(x, ctx_for(x, True, pos=RotaryPosition(e)))
    torch.testing.assert_close(ya, yb, **TOL)
    # and the biases matter: without them the outputs differ
    yc, _ = a(x, ctx_for(x, True, pos=RotaryPosition(e)))
    assert not torch.allclose(ya, yc, atol=1e-3)


def test_rope_bias_scores_are_relative_and_zero_bias_is_rope():
    e = 8
    q, k = torch.randn(2, 2, 9, e), torch.randn(2, 2, 9, e)
    pos = torch.arange(9).expand(2, -1)
    pe = RotaryBiasPosition(e, heads=2)
    rq, rk = RotaryPosition(e).rotate(q, k, pos, pos)
    bq, bk = pe.rotate(q, k, pos, pos)
    torch.testing.assert_close(bq, rq)
    with torch.no_grad():
        pe.b_q.normal_()
        pe.b_k.normal_()
    qa, ka = pe.rotate(q, k, pos, pos)
    qb, kb = pe.rotate(q, k, pos + 77, pos + 77)
    torch.testing.assert_close(qa @ ka.transpose(-1, -2), qb @ kb.transpose(-1, -2),
                               atol=1e-4, rtol=1e-4)


def test_rope_bias_with_grouped_kv_heads_uses_the_group_mean():
    q, k = torch.randn(1, 4, 5, 8), torch.randn(1, 2, 5, 8)
    pos = torch.arange(5).unsqueeze(0)
    pe = RotaryBiasPosition(8, heads=4)
    with torch.no_grad():
        pe.b_q.normal_()
        pe.b_k.normal_()
    out_q, out_k = pe.rotate(q, k, pos, pos)
    b_k = pe.b_k.view(2, 2, 8).mean(1)[None, :, None, :]
    ref_q, ref_k = RotaryPosition(8).rotate(q + pe.b_q[None, :, None, :], k + b_k, pos, pos)
    torch.testing.assert_close(out_q, ref_q)
    torch.testing.assert_close(out_k, ref_k)
    with pytest.raises(ConfigError, match="heads"):
        pe.rotate(torch.randn(1, 3, 5, 8), k, pos, pos)
