"""H3 (Fu et al., 2023): the recurrent decode (shift register + diagonal SSM state) equals the
parallel FFT-convolution form, the parallel scan and a plain loop of Algorithm 1."""
import pytest
import torch

from tevo.errors import ConfigError
from papers.linear_reference import assert_rel_close, ctx, left_padded, prefill_then_steps
from tiny import make_mixer


def h3_loop(m, x, mask=None):
    """Algorithm 1, one token at a time: shift register of the last T keys, K̃ = Σ_j C_j K_{t-j}
    + D_s K_t, per head KV = K̃ Vᵀ into a diagonal SSM (x ← Ā x + B̄ KV, y = 2Re(C x) + D KV),
    O = Q · y, output projection. Padded tokens enter as zeros."""
    B, n, d = x.shape
    h, p, T = m.heads, m.p, m.T
    A, Bb, C = m.ssm.discrete()                              # (h, S), (h, S), (1, h, S)
    q, k, v = m.q_proj(x), m.k_proj(x), m.v_proj(x)
    if mask is not None:
        q, k, v = (t * mask[..., None] for t in (q, k, v))
    reg = torch.zeros(B, T, d)                               # x_shift = [k_t, k_{t-1}, ...]
    s = torch.zeros(B, p, p, h, A.shape[1], dtype=torch.cfloat)
    outs = []
    for t in range(n):
        reg = torch.cat([k[:, t:t + 1], reg[:, :-1]], 1)     # x ← S x + e₁ k_t
        kt = torch.einsum("btd,dt->bd", reg, m.shift_C) + m.shift_D * k[:, t]
        kh, vh, qh = (z.view(B, h, p) for z in (kt, v[:, t], q[:, t]))
        kv = torch.einsum("bhi,bhj->bijh", kh, vh)           # (B, p1, p2, h)
        s = A * s + Bb * kv[..., None]
        y = (C[0] * s).sum(-1).real + m.D * kv                # (B, p1, p2, h)
        o = torch.einsum("bhi,bijh->bhj", qh, y).reshape(B, d)
        outs.append(m.o_proj(o))
    return torch.stack(outs, 1), s


@pytest.mark.parametrize("head_dim", [1, 4])
def test_h3_recurrent_decode_equals_parallel_and_loop(head_dim):
    m = make_mixer("h3", True, head_dim=head_dim, state_size=4, shift_size=3)
    x, mask = left_padded(n=13)
    y_loop, s_last = h3_loop(m, x, mask)
    y_inc, y_full, st = prefill_then_steps(m, x, mask)
    assert_rel_close(y_full[mask], y_loop[mask], 1e-5, "parallel (FFT) vs loop")
    assert_rel_close(y_inc[mask], y_loop[mask], 1e-5, "decode vs loop")
    assert_rel_close(torch.view_as_real(st["x"]), torch.view_as_real(s_last), 1e-5, "state")
    assert st["shift"].shape == (2, 2, 16)                    # the last T-1 keys: fixed size
    m_scan = make_mixer("h3", True, head_dim=head_dim, state_size=4, shift_size=3, form="scan")
    m_scan.load_state_dict(m.state_dict())
    y_scan, _ = m_scan(x, ctx(x, True, mask))
    assert_rel_close(y_scan[mask], y_loop[mask], 1e-5, "scan vs loop")
    # gradients of the parallel form equal the loop's (input and all parameters)
    xr = x.clone().requires_grad_(True)
    w = torch.randn(x.shape)
    y_full, _ = m(xr, ctx(xr, True, mask))
    params = [xr] + list(m.parameters())
    g1 = torch.autograd.grad(((y_full * w)[mask]).sum(), params)
    g2 = torch.autograd.grad(((h3_loop(m, xr, mask)[0] * w)[mask]).sum(), params)
    for a, b in zip(g1, g2):
        assert_rel_close(a, b, 1e-4, "gradient")


def test_h3_shift_ssm_is_the_ssm_with_a_shift_matrix():
    """SSM_shift as the paper writes it — A = S (ones on the subdiagonal), B = e₁, x_t = S x_{t-1}
    + e₁ K_t, K̃_t = C x_t + D K_t — equals what the mixer computes from its taps (K̃ of the
    decode path, which is the FFT convolution's)."""
    m = make_mixer("h3", True, head_dim=1, state_size=2, shift_size=4)
    x = torch.randn(1, 9, 16)
    k = m.k_proj(x)
    S = torch.diag(torch.ones(3), -1)                         # (T, T) shift matrix
    e1 = torch.zeros(4)
    e1[0] = 1
    state = torch.zeros(16, 4)
    want = []
    for t in range(9):
        state = state @ S.T + k[0, t, :, None] * e1           # per channel
        want.append((state * m.shift_C).sum(-1) + m.shift_D * k[0, t])
    want = torch.stack(want)[None]
    from tevo.nn.fftconv import conv_buffer, conv_with_state
    got, buf = conv_with_state(k, m.shift_C, conv_buffer(1, 4, 16), m.shift_D)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(buf[0].flip(0).T, state[:, :3])  # the register = the SSM state


@pytest.mark.parametrize("opts,field", [({"state_size": 0}, "state_size"),
                                        ({"shift_size": 0}, "shift_size"),
                                        ({"head_dim": 3}, "head_dim"),
                                        ({"form": "loop"}, "form")])
def test_h3_bad_options(opts, field):
    with pytest.raises(ConfigError, match=field) as e:
        make_mixer("h3", True, **opts)
    assert "\n" not in str(e.value)
