"""Value-aware approximation: on a test set its output error is below the value-oblivious
top-r approximation with the same budget; with r ≥ n it is exact softmax attention."""
import math

import torch

from tevo.mixers.attention.value_aware import value_aware_weights
from tevo.nn.context import MixerContext
from tiny import make_mixer


def test_value_aware_error_below_value_oblivious():
    n, e, r = 24, 8, 4
    aware, oblivious = [], []
    for _ in range(20):                                   # the test set: 20 random problems
        q, k, v = (torch.randn(1, 2, n, e) for _ in range(3))
        for causal in (False, True):
            s = q @ k.transpose(-1, -2) / math.sqrt(e)
            allowed = torch.ones(1, 2, n, n, dtype=torch.bool)
            if causal:
                allowed = allowed & torch.ones(n, n, dtype=torch.bool).tril()
            A = s.masked_fill(~allowed, float("-inf")).softmax(-1)
            o = A @ v
            top = A.topk(r, -1)                          # optimal value-oblivious r-sparse rows
            Ao = torch.zeros_like(A).scatter(-1, top.indices, top.values)
            Ao = Ao / Ao.sum(-1, keepdim=True)
            W = value_aware_weights(o, v, allowed, r)
            assert ((W != 0).sum(-1) <= r).all()
            assert (W[~allowed] == 0).all()
            aware.append((W @ v - o).norm(dim=-1))
            oblivious.append((Ao @ v - o).norm(dim=-1))
    aware, oblivious = torch.cat([a.flatten() for a in aware]), torch.cat([a.flatten() for a in oblivious])
    assert aware.mean() < 0.6 * oblivious.mean()
    assert (aware <= oblivious + 1e-5).float().mean() > 0.9


def test_value_aware_with_every_key_is_softmax():
    a = make_mixer("value_aware", True, heads=2, keys=12)
    b = make_mixer("softmax", True, heads=2, impl="eager")
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 10, 16)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, :2] = False
    ctx = MixerContext(causal=True, key_padding_mask=mask)
    torch.testing.assert_close(a(x, ctx)[0][mask], b(x, ctx)[0][mask], atol=1e-4, rtol=1e-4)
