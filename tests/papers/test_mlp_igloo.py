"""IGLOO (Sourkov, 2018): F = LeakyReLU(Conv1D(X)); each of K fixed random patches gathers l
slices (rows, or single (offset, channel) entries) of F, weights and sums them:
z_{t,k} = Σ_j Σ_c W_{k,j,c} F[t − o_{k,j}, c] + b_k;  y = LeakyReLU(z) W_out.
Checked against a loop over (output, patch, entry) with the convolution
written out too; the causal form never reads the future; the tables are fixed and saved."""
import pytest
import torch

from tevo.errors import ConfigError, InputError
from tevo.nn.context import MixerContext
from tevo.registry import MIXERS


def build(causal, **kw):
    spec = {"name": "igloo", "patches": 5, "patch_size": 3, "channels": 4, "kernel": 3,
            "window": 6, **kw}
    return MIXERS.build(spec, d_model=6, causal=causal, max_len=64).eval()


def slow(m, x):
    """The equation with every sum a Python loop (zeros outside the sequence)."""
    B, n, d = x.shape
    k, C = m.kernel, m.C
    left = k - 1 if m.causal else (k - 1) // 2
    Wc, bc = m.conv.weight, m.conv.bias                                    # (C, d, k), (C,)
    feat = torch.zeros(B, n, C)
    for b in range(B):
        for t in range(n):
            for c in range(C):
                s = bc[c]
                for i in range(k):
                    p = t - left + i
                    if 0 <= p < n:
                        s = s + (Wc[c, :, i] * x[b, p]).sum()
                feat[b, t, c] = torch.where(s > 0, s, 0.1 * s)
    y = torch.zeros(B, n, d)
    for b in range(B):
        for t in range(n):
            z = torch.zeros(m.K)
            for kk in range(m.K):
                s = m.bias[kk]
                for j in range(m.l):
                    p = t - int(m.offsets[kk, j])
                    if not 0 <= p < n:
                        continue
                    if m.full_rows:
                        for c in range(C):
                            s = s + m.weight[kk, j * C + c] * feat[b, p, c]
                    else:
                        s = s + m.weight[kk, j] * feat[b, p, int(m.chans[kk, j])]
                z[kk] = s
            y[b, t] = m.out_proj(torch.where(z > 0, z, 0.1 * z))
    return y


@pytest.mark.parametrize("causal,full_rows", [(True, True), (False, True), (True, False),
                                             (False, False)])
def test_igloo_equals_slow_loop_of_the_equation(causal, full_rows):
    torch.manual_seed(0)
    m = build(causal, full_rows=full_rows)
    with torch.no_grad():
        m.bias.normal_()
    x = torch.randn(2, 9, 6)
    y, _ = m(x, MixerContext(causal=causal))
    with torch.no_grad():
        torch.testing.assert_close(y, slow(m, x), atol=1e-5, rtol=1e-5)
    assert all(len(set(r.tolist())) == m.l for r in m.offsets)       # distinct slices
    if causal:
        assert (m.offsets >= 0).all() and (m.offsets < 6).all()
    else:
        assert (m.offsets < 0).any() and (m.offsets > 0).any() and (m.offsets.abs() < 6).all()


def test_causal_igloo_never_reads_the_future_and_relates_distant_positions():
    torch.manual_seed(1)
    n = 16
    m = build(True, patches=12, patch_size=4, window=16)
    x = torch.randn(1, n, 6, requires_grad=True)
    y, _ = m(x, MixerContext(causal=True))
    for t in range(n - 1):
        (gx,) = torch.autograd.grad(y[0, t].sum(), x, retain_graph=True)
        assert gx[0, t + 1:].abs().max() == 0
    # a patch entry with offset o > kernel span links t to t − o: a far past position matters
    (gx,) = torch.autograd.grad(y[0, n - 1].sum(), x, retain_graph=True)
    assert gx[0, : n - 1 - 3].abs().sum() > 0
    # the bidirectional form does read ahead
    mb = build(False, patches=12, patch_size=4, window=16)
    yb, _ = mb(x, MixerContext())
    (gb,) = torch.autograd.grad(yb[0, 0].sum(), x)
    assert gb[0, 3:].abs().sum() > 0
    with pytest.raises(InputError):
        mb(x, MixerContext(causal=True))


def test_igloo_tables_are_fixed_across_calls_and_saved_in_checkpoints():
    torch.manual_seed(2)
    m = build(True)
    x = torch.randn(2, 8, 6)
    off, ch = m.offsets.clone(), m.chans.clone()
    y1, _ = m(x, MixerContext(causal=True))
    m.train()
    y2, _ = m(x, MixerContext(causal=True))
    torch.testing.assert_close(y1, y2)
    assert torch.equal(m.offsets, off) and torch.equal(m.chans, ch)
    sd = m.state_dict()
    assert "offsets" in sd and "chans" in sd
    other = build(True, seed=7)                   # other tables, other weights
    assert not (torch.equal(other.offsets, off) and torch.equal(other.chans, ch))
    other.load_state_dict(sd)
    assert torch.equal(other.offsets, off) and torch.equal(other.chans, ch)
    torch.testing.assert_close(other(x, MixerContext(causal=True))[0], y1)
    # the same seed and layer draw the same tables; another layer draws others
    assert torch.equal(build(True).offsets, off)
    l1 = MIXERS.build({"name": "igloo", "patches": 5, "patch_size": 3, "channels": 4,
                       "window": 6}, d_model=6, causal=True, layer=1)
    assert not (torch.equal(l1.offsets, off) and torch.equal(l1.chans, ch))


@pytest.mark.parametrize("opt,val", [("patches", 0), ("patches", -3), ("patch_size", 0),
                                     ("channels", 0), ("kernel", 0), ("window", 0),
                                     ("patches", 2.5), ("full_rows", "yes"), ("seed", "a")])
def test_igloo_bad_options_are_one_line_config_errors(opt, val):
    with pytest.raises(ConfigError) as e:
        build(True, **{opt: val})
    msg = str(e.value)
    assert "\n" not in msg and f"igloo).{opt}" in msg
