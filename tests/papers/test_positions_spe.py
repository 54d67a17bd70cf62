"""SPE: the FFT codes equal the explicit Toeplitz (convolution-matrix) product, the codes are a
fixed function of absolute position, the kernel q̂·k̂ is in expectation Σ_d q_d k_d P_d(j-i)
(relative), and inside causal linear attention prefill + steps == full pass."""
import pytest
import torch
import torch.nn.functional as F

from tevo.positions.spe import StochasticPositionalEncoding, causal_conv_fft, hashed_normal
from tevo.registry import MIXERS
from tiny import ctx_for, make_mixer

TOL = dict(atol=1e-5, rtol=1e-4)


def test_spe_codes_equal_explicit_toeplitz_product():
    torch.manual_seed(10)
    C, K, L = 3, 5, 17
    z, f = torch.randn(2, C, L), torch.randn(C, K)
    out = causal_conv_fft(z, f)                                          # (2, C, L - K + 1)
    T = torch.zeros(C, L - K + 1, L)                     # Toeplitz: T[t, s] = f[t + K - 1 - s]
    for c in range(C):
        for t in range(L - K + 1):
            for s in range(L):
                a = t + K - 1 - s
                if 0 <= a < K:
                    T[c, t, s] = f[c, a]
    torch.testing.assert_close(out, torch.einsum("cts,bcs->bct", T, z), **TOL)
    # the codes of a position do not depend on which window they are computed in
    pe = StochasticPositionalEncoding(heads=2, head_dim=4, realizations=6, kernel_size=K,
                                      stage="features").eval()
    wide_q, wide_k = pe.codes(0, 30, 0, "cpu")
    part_q, part_k = pe.codes(11, 19, 0, "cpu")
    torch.testing.assert_close(part_q, wide_q[..., 11:20], **TOL)
    torch.testing.assert_close(part_k, wide_k[..., 11:20], **TOL)
    noise = hashed_normal(3, torch.arange(-50, 5000), 4, 64)
    assert abs(float(noise.mean())) < 0.01 and abs(float(noise.std()) - 1) < 0.01


@pytest.mark.parametrize("gated", [False, True])
def test_spe_kernel_is_relative_in_expectation(gated):
    torch.manual_seed(11)
    m, K, R = 4, 4, 40000
    # the default configuration: stage="qk" (SPE on the raw q, k, as in the paper: q̂·k̂ is
    # what the feature map then reads), no positivity map. Its R = m realizations are i.i.d.
    # draws of one estimator; R is raised here only so that their mean nears the expectation
    pe = StochasticPositionalEncoding(heads=1, head_dim=m, kernel_size=K, gated=gated).eval()
    assert pe.stage == "qk" and pe.R == m
    pe.R = R
    q, k = torch.randn(1, 1, 1, m), torch.randn(1, 1, 1, m)
    fq, fk = pe.filter_q.detach(), pe.filter_k.detach()
    g = torch.sigmoid(pe.gate.detach()) if gated else torch.zeros(m)

    def analytic(t):                                      # Σ_d q_d k_d ((1-g) P_d(t) + g)
        P = torch.stack([sum((fq[d, a] * fk[d, a + t] for a in range(K) if 0 <= a + t < K),
                             torch.tensor(0.0)) for d in range(m)])
        return float((q[0, 0, 0] * k[0, 0, 0] * ((1 - g) * P + g)).sum())

    pairs = [(5, 5), (5, 7), (20, 22), (9, 6), (30, 27)]
    qi = torch.tensor([[i for i, _ in pairs]])
    kj = torch.tensor([[j for _, j in pairs]])
    with torch.no_grad():                                 # one call: codes of positions 5..30
        qh, kh = pe.features(q.expand(1, 1, len(pairs), m), k.expand(1, 1, len(pairs), m), qi, kj)
    est = (qh * kh).sum(-1)[0, 0]                         # a mean over R realizations per pair
    for a, (i, j) in enumerate(pairs):
        assert float(est[a]) == pytest.approx(analytic(j - i), abs=0.04), (i, j)


def _stand_in(x, pe, positions, qkv, heads=2, state=None):
    """Causal linear attention, φ = elu + 1, feature hook, (S, z) state."""
    B, n, d = x.shape
    q, k, v = (t.view(B, n, heads, -1).transpose(1, 2) for t in qkv(x).chunk(3, -1))
    fq, fk = pe.features(F.elu(q) + 1, F.elu(k) + 1, positions, positions)
    m, e = fk.shape[-1], v.shape[-1]
    S0 = torch.zeros(B, heads, m, e) if state is None else state[0]
    z0 = torch.zeros(B, heads, m) if state is None else state[1]
    S = S0[:, :, None] + (fk[..., :, None] * v[..., None, :]).cumsum(2)
    z = z0[:, :, None] + fk.cumsum(2)
    y = (fq[..., None] * S).sum(-2) / (fq * z).sum(-1, keepdim=True)
    return y, (S[:, :, -1], z[:, :, -1])


def test_spe_in_stand_in_linear_attention_cache_and_redraw():
    torch.manual_seed(12)
    qkv = torch.nn.Linear(16, 48)
    pe = StochasticPositionalEncoding(heads=2, head_dim=8, realizations=8, kernel_size=4).eval()
    x = torch.randn(2, 10, 16)
    pos = torch.arange(10).expand(2, -1)
    full, _ = _stand_in(x, pe, pos, qkv)
    assert torch.isfinite(full).all()
    y, st = _stand_in(x[:, :3], pe, pos[:, :3], qkv)
    outs = [y]
    for t in range(3, 10):
        y, st = _stand_in(x[:, t:t + 1], pe, pos[:, t:t + 1], qkv, state=st)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 2), full, **TOL)
    pe.train()                                            # fresh realizations in training
    a, _ = _stand_in(x, pe, pos, qkv)
    b, _ = _stand_in(x, pe, pos, qkv)
    assert not torch.allclose(a, b)


@pytest.mark.skipif("linear" not in MIXERS, reason="the linear-attention family is not registered")
def test_spe_inside_linear_mixer_decodes_like_full_pass():
    torch.manual_seed(13)
    m = make_mixer("linear", True)
    pe = StochasticPositionalEncoding(heads=2, head_dim=8, realizations=8, kernel_size=4).eval()
    x = torch.randn(2, 9, 16)
    full, _ = m(x, ctx_for(x, True, pos=pe))
    st = m.init_state(2)
    ctx = ctx_for(x, True, pos=pe)
    y, st = m(x[:, :5], ctx.replace(positions=ctx.positions[:, :5]), st)
    outs = [y]
    for t in range(5, 9):
        y, st = m(x[:, t:t + 1], ctx.replace(positions=ctx.positions[:, t:t + 1]), st)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 1), full, **TOL)


@pytest.mark.skipif("performer" not in MIXERS, reason="the performer mixer is not registered")
@pytest.mark.parametrize("mixer", ["performer", "linear", "cosformer"])
def test_spe_is_applied_before_the_mixers_feature_map(mixer):
    """As in the paper, the mixer's feature map reads SPE's q̂, k̂ (not the reverse): the
    mixer's features equal φ(SPE(q, k)); stage="features" keeps the reverse order."""
    torch.manual_seed(14)
    m = make_mixer(mixer, True)
    e = m.head_dim
    pe = StochasticPositionalEncoding(heads=m.heads, head_dim=e, kernel_size=4).eval()
    x = torch.randn(2, 7, 16)
    ctx = ctx_for(x, True, pos=pe)
    q, k = torch.randn(2, m.heads, 7, e), torch.randn(2, m.heads, 7, e)
    fq, fk = m.features(q, k, ctx, ctx.positions)
    sq, sk = pe.features(q, k, ctx.positions, ctx.positions)
    bare = ctx_for(x, True)
    rq, rk = m.features(sq, sk, bare, ctx.positions)
    torch.testing.assert_close(fq, rq, **TOL)
    torch.testing.assert_close(fk, rk, **TOL)
    if mixer == "cosformer":                 # its hook sits between relu and the reweighting
        return
    late = StochasticPositionalEncoding(heads=m.heads, head_dim=e, kernel_size=4,
                                        realizations=8, stage="features").eval()
    late.load_state_dict(pe.state_dict())
    gq, _ = m.features(q, k, ctx_for(x, True, pos=late), ctx.positions)
    mq, mk = m.features(q, k, bare, ctx.positions)
    torch.testing.assert_close(gq, late.features(mq, mk, ctx.positions, ctx.positions)[0], **TOL)
