"""PermuteFormer: π^pos from the cycles equals the reference's expanded permutation table, the
feature inner product depends only on j - i, and inside causal linear attention (a tiny
stand-in, and tevo's ``linear`` mixer when registered) outputs are shift-invariant and
prefill + steps == full pass."""
import pytest
import torch
import torch.nn.functional as F

from tevo.positions.permute import PermutePosition, random_permutations
from tevo.registry import MIXERS
from tiny import ctx_for, make_mixer

TOL = dict(atol=1e-5, rtol=1e-4)


def _expand_permutation(max_seq_length, permutation):
    """cpcp1998/PermuteFormer ``expand_permutation`` (reference)."""
    num_head, head_size = permutation.shape
    expanded = [torch.arange(head_size).unsqueeze(0).expand(num_head, head_size)]
    for _ in range(max_seq_length - 1):
        expanded.append(expanded[-1].gather(-1, permutation))
    return torch.stack(expanded, dim=1)


class StandInLinear(torch.nn.Module):
    """Causal linear attention, φ = elu + 1, with the ``feature`` hook and an (S, z) state."""

    def __init__(self, d=16, heads=2):
        super().__init__()
        self.h = heads
        self.qkv = torch.nn.Linear(d, 3 * d)

    def forward(self, x, pe, positions, state=None):
        B, n, d = x.shape
        q, k, v = (t.view(B, n, self.h, -1).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))
        fq, fk = pe.features(F.elu(q) + 1, F.elu(k) + 1, positions, positions)
        m, e = fk.shape[-1], v.shape[-1]
        S0 = torch.zeros(B, self.h, m, e) if state is None else state[0]
        z0 = torch.zeros(B, self.h, m) if state is None else state[1]
        S = S0[:, :, None] + (fk[..., :, None] * v[..., None, :]).cumsum(2)   # (B, h, n, m, e)
        z = z0[:, :, None] + fk.cumsum(2)                                     # (B, h, n, m)
        y = (fq[..., None] * S).sum(-2) / (fq * z).sum(-1, keepdim=True)
        return y, (S[:, :, -1], z[:, :, -1])


def test_permute_matches_reference_and_is_relative():
    pe = PermutePosition()
    h, m = 3, 10
    table = _expand_permutation(60, random_permutations(h, m))          # (h, 60, m)
    pos = torch.arange(60).unsqueeze(0)
    assert torch.equal(pe.power_index(h, m, pos)[0], table)
    fq, fk = torch.rand(2, h, 8, m), torch.rand(2, h, 8, m)
    p = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7], [3, 5, 8, 13, 21, 34, 55, 89]])
    a, b = pe.features(fq, fk, p, p)
    c, d = pe.features(fq, fk, p + 1000, p + 1000)
    torch.testing.assert_close(a @ b.transpose(-1, -2), c @ d.transpose(-1, -2))
    assert not torch.allclose(a @ b.transpose(-1, -2), fq @ fk.transpose(-1, -2))
    assert (a >= 0).all() and torch.equal(a.sort(-1).values, fq.sort(-1).values)  # a permutation


def test_permute_in_stand_in_linear_attention_shift_and_cache():
    torch.manual_seed(9)
    att, pe = StandInLinear(), PermutePosition()
    x = torch.randn(2, 10, 16)
    pos = torch.arange(10).expand(2, -1)
    full, _ = att(x, pe, pos)
    torch.testing.assert_close(att(x, pe, pos + 37)[0], full, **TOL)
    y, st = att(x[:, :4], pe, pos[:, :4])
    outs = [y]
    for t in range(4, 10):
        y, st = att(x[:, t:t + 1], pe, pos[:, t:t + 1], st)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 2), full, **TOL)


@pytest.mark.skipif("linear" not in MIXERS, reason="the linear-attention family is not registered")
def test_permute_inside_linear_mixer_is_shift_invariant():
    m = make_mixer("linear", True)
    pe = PermutePosition()
    x = torch.randn(2, 9, 16)
    ctx = ctx_for(x, True, pos=pe)
    y, _ = m(x, ctx)
    y2, _ = m(x, ctx.replace(positions=ctx.positions + 50))
    torch.testing.assert_close(y2, y, **TOL)
    y3, _ = m(x, ctx_for(x, True))                                       # and it does something
    assert not torch.allclose(y3, y, atol=1e-4)


def test_permute_reference_decay_as_a_state_decay():
    """decay=True gives the reference's per-head r_h^{i-j} (r_h = sigmoid(3h/H + 2)) inside
    causal kernel attention — an explicit weighted average with padding equals the mixer, and
    prefill + steps equals the full pass — and mixers without a decaying state, or bidirectional
    attention, refuse it in one line."""
    import pytest
    from tevo.errors import ConfigError
    from tiny import make_mixer
    from papers.linear_reference import assert_rel_close, ctx, left_padded, prefill_then_steps
    torch.manual_seed(4)
    m = make_mixer("linear", True)
    pe = PermutePosition(decay=True)
    x, mask = left_padded(n=11)
    c = ctx(x, True, mask, pos=pe)
    y, _ = m(x, c)
    B, n, _ = x.shape
    h, e = m.heads, m.head_dim
    q, k, v = (p(x).view(B, n, h, e).transpose(1, 2) for p in (m.q_proj, m.k_proj, m.v_proj))
    with torch.no_grad():
        fq, fk = m.features(q, k, c, c.positions)
        r = torch.sigmoid(torch.arange(h) / h * 3 + 2)                    # the reference's ratio
        dist = (c.positions[:, :, None] - c.positions[:, None, :]).float()    # (B, n, n)
        w = (fq @ fk.transpose(-1, -2)) * r[None, :, None, None] ** dist[:, None]
        w = (w * mask[:, None, None, :]).tril()
        ref = m.o_proj(((w @ v) / w.sum(-1, keepdim=True)).transpose(1, 2).reshape(B, n, h * e))
    assert_rel_close(y[mask], ref[mask], 1e-5)
    plain, _ = m(x, ctx(x, True, mask, pos=PermutePosition()))
    assert not torch.allclose(plain[mask], y[mask], atol=1e-4)
    y_inc, y_full, _ = prefill_then_steps(m, x, mask, pos=pe)
    assert_rel_close(y_inc[mask], y_full[mask], 1e-5)
    for name, causal in (("fast_weight", True), ("linear", False)):
        mm = make_mixer(name, causal)
        with pytest.raises(ConfigError, match="position.decay") as err:
            mm(x, ctx(x, causal, None, pos=pe))
        assert "\n" not in str(err.value)
