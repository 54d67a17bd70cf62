"""DIET: DIET-ABS adds the per-head low-rank product (P^Q_h)_i·(P^K_h)_j, DIET-REL the per-head
scalar r^h_{clip(j-i)}; checked pair by pair, and only DIET-REL is shift-invariant."""
import pytest
import torch

from tevo.errors import ConfigError
from tevo.positions.diet import DIETPosition


def test_diet_abs_and_rel_equal_their_definitions():
    torch.manual_seed(6)
    h, n = 3, 9
    q = torch.zeros(2, h, n, 4)
    pos = torch.tensor([[0, 0, 0, 1, 2, 3, 4, 5, 6], list(range(n))])
    ab = DIETPosition(max_len=32, heads=h, variant="abs", rank=5)
    out = ab.bias(q, q, pos, pos)
    pq = ab.p_q.weight.view(32, h, 5)
    pk = ab.p_k.weight.view(32, h, 5)
    for b in range(2):
        for i in range(n):
            for j in range(n):
                ref = (pq[pos[b, i]] * pk[pos[b, j]]).sum(-1)
                torch.testing.assert_close(out[b, :, i, j], ref, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(ab.bias(q, q, pos + 3, pos + 3), out)       # absolute
    rel = DIETPosition(heads=h, variant="rel", max_distance=3)
    out = rel.bias(q, q, pos, pos)
    for b in range(2):
        for i in range(n):
            for j in range(n):
                d = max(-3, min(3, int(pos[b, j] - pos[b, i])))
                torch.testing.assert_close(out[b, :, i, j], rel.rel.weight[d + 3])
    torch.testing.assert_close(rel.bias(q, q, pos + 17, pos + 17), out)     # relative
    assert rel.translation_invariant and not ab.translation_invariant


def test_diet_bad_variant_is_config_error():
    with pytest.raises(ConfigError, match="abs"):
        DIETPosition(variant="both")
