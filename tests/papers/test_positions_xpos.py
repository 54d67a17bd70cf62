"""xPos against a transcription of torchscale's XPOS (the authors' code), its relative property
and its decay."""
import pytest
import torch

from tevo.positions.rope import RotaryPosition
from tevo.positions.xpos import XPosPosition

TOL = dict(atol=1e-5, rtol=1e-4)


# --- torchscale/component/xpos_relative_position.py, transcribed (x: (B·h, n, e)) -------------
def _fixed_pos_embedding(x):
    seq_len, dim = x.shape
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim) / dim))
    sinusoid_inp = torch.einsum("i , j -> i j", torch.arange(0, seq_len, dtype=torch.float),
                                inv_freq).to(x)
    return torch.sin(sinusoid_inp), torch.cos(sinusoid_inp)


def _rotate_every_two(x):
    x1, x2 = x[:, :, ::2], x[:, :, 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def _duplicate_interleave(m):
    dim0 = m.shape[0]
    return m.view(-1, 1).repeat(1, 2).view(dim0, -1)


def _apply_rotary_pos_emb(x, sin, cos, scale=1):
    sin, cos = map(lambda t: _duplicate_interleave(t * scale), (sin, cos))
    return (x * cos) + (_rotate_every_two(x) * sin)


def _torchscale_xpos(x, head_dim, scale_base=512, offset=0, downscale=False):
    scale_vec = (torch.arange(0, head_dim, 2) + 0.4 * head_dim) / (1.4 * head_dim)
    length = x.shape[1]
    min_pos = -(length + offset) // 2
    max_pos = length + offset + min_pos
    scale = scale_vec ** torch.arange(min_pos, max_pos, 1).to(scale_vec).div(scale_base)[:, None]
    sin, cos = _fixed_pos_embedding(scale)
    if scale.shape[0] > length:
        scale, sin, cos = scale[-length:], sin[-length:], cos[-length:]
    if downscale:
        scale = 1 / scale
    return _apply_rotary_pos_emb(x, sin, cos, scale)
# ----------------------------------------------------------------------------------------------


def test_xpos_scores_match_torchscale_reference():
    e, n, sb = 16, 20, 8.0          # a small scale_base makes the decay large enough to see
    q, k = torch.randn(1, 2, n, e), torch.randn(1, 2, n, e)
    ref_q = _torchscale_xpos(q[0], e, sb)
    ref_k = _torchscale_xpos(k[0], e, sb, downscale=True)
    pe = XPosPosition(e, max_len=64, scale_base=sb)
    pos = torch.arange(n).unsqueeze(0)
    out_q, out_k = pe.rotate(q, k, pos, pos)
    # the reference centres the exponents on the current sequence, tevo on a fixed centre: the
    # vectors differ by ζ^{±c}, the scores q·k do not
    torch.testing.assert_close(out_q[0] @ out_k[0].transpose(-1, -2),
                               ref_q @ ref_k.transpose(-1, -2), **TOL)


def test_xpos_is_rope_times_a_relative_decay():
    e, n, sb = 16, 12, 4.0
    q, k = torch.randn(2, 2, n, e), torch.randn(2, 2, n, e)
    pos = torch.arange(n).expand(2, -1)
    xq, xk = XPosPosition(e, max_len=64, scale_base=sb).rotate(q, k, pos, pos)
    s = xq @ xk.transpose(-1, -2)
    # relative: shifting both positions changes nothing (up to the fp32 range of ζ^{±pos/sb})
    sq, sk = XPosPosition(e, max_len=64, scale_base=sb).rotate(q, k, pos + 50, pos + 50)
    torch.testing.assert_close(s, sq @ sk.transpose(-1, -2), atol=1e-4, rtol=1e-3)
    # per frequency pair i the score is rope's pair score times ζ_i^{(m-n)/sb}
    zeta = (torch.arange(0, e, 2) + 0.4 * e) / (1.4 * e)
    rope = RotaryPosition(e, layout="interleaved")
    rq, rk = rope.rotate(q, k, pos, pos)
    pair = (rq.unflatten(-1, (e // 2, 2)).unsqueeze(3) *
            rk.unflatten(-1, (e // 2, 2)).unsqueeze(2)).sum(-1)       # (B, h, n, n, e/2)
    dist = (pos[0][:, None] - pos[0][None, :]).float()
    expected = (pair * zeta ** (dist[..., None] / sb)).sum(-1)
    torch.testing.assert_close(s, expected, **TOL)
    assert (zeta < 1).all()         # so far keys (m - n > 0) are down-weighted


def _xpos_scores_float64(q, k, qp, kp, e, sb=512.0, gamma=0.4):
    """Σ_i ζ_i^{(n−m)/γ_s} (R_n q)_i·(R_m k)_i in float64 (interleaved pairs, exact angles)."""
    theta = 1.0 / 10000 ** (torch.arange(0, e, 2, dtype=torch.float64) / e)

    def rot(x, p):
        a = p.double()[:, None] * theta                                # (n, e/2)
        x0, x1 = x.double()[..., 0::2], x.double()[..., 1::2]
        return torch.stack([x0 * a.cos() - x1 * a.sin(), x1 * a.cos() + x0 * a.sin()], -1)
    rq, rk = rot(q, qp), rot(k, kp)                                    # (..., n, e/2, 2)
    pair = (rq[..., :, None, :, :] * rk[..., None, :, :, :]).sum(-1)   # (..., n, m, e/2)
    zeta = (torch.arange(0, e, 2, dtype=torch.float64) + gamma * e) / ((1 + gamma) * e)
    dist = (qp[:, None] - kp[None, :]).double()
    return (pair * zeta ** (dist[..., None] / sb)).sum(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("offset", [0, 40_000, 1_000_000, 3_000_000])
def test_xpos_finite_and_correct_at_a_million_positions(dtype, offset):
    """Scores at positions past 1M (NaN beyond ≈37k with a fixed centre) equal the float64
    formula, in fp32 and bf16; far keys decay to 0 instead of 0·inf."""
    torch.manual_seed(0)
    e, n = 16, 12
    pe = XPosPosition(e, max_len=64)
    q, k = torch.randn(1, 2, n, e), torch.randn(1, 2, n, e)
    qp = torch.arange(n) + offset
    kp = torch.cat([torch.tensor([0, offset // 2]), torch.arange(n - 2) + offset])   # far keys too
    rq, rk = pe.rotate_call(q.to(dtype), k.to(dtype), qp[None], kp[None])
    got = (rq.double() @ rk.double().transpose(-1, -2))[0]
    want = _xpos_scores_float64(q[0], k[0], qp, kp, e)
    assert torch.isfinite(got).all()
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=0.1, rtol=0.03)
    torch.testing.assert_close(got, want, **tol)


def test_xpos_cached_decoding_at_a_million_positions_equals_the_start():
    """A softmax mixer with xPos decodes with its KV cache (raw keys re-encoded per call) at
    positions past 1M exactly as at position 0 (scores are relative); the fixed-centre path
    refuses such positions in one line instead of returning NaN."""
    from tevo.errors import InputError
    from tiny import ctx_for, make_mixer
    torch.manual_seed(1)
    m = make_mixer("softmax", True)
    pe = XPosPosition(8, max_len=64)
    x = torch.randn(2, 10, 16)
    outs = {}
    for off in (0, 1_000_000):
        ctx = ctx_for(x, True, pos=pe)
        ctx = ctx.replace(positions=ctx.positions + off)
        full, _ = m(x, ctx)
        st = m.init_state(2)
        ys = []
        for a, b in ((0, 4), (4, 5), (5, 6), (6, 10)):
            y, st = m(x[:, a:b], ctx.replace(positions=ctx.positions[:, a:b]), st)
            ys.append(y)
        torch.testing.assert_close(torch.cat(ys, 1), full, atol=1e-5, rtol=1e-4)
        outs[off] = full
    torch.testing.assert_close(outs[1_000_000], outs[0], atol=1e-4, rtol=1e-4)
    q = torch.randn(1, 2, 3, 8)
    far = torch.arange(3)[None] + 1_000_000
    with pytest.raises(InputError, match="xpos"):
        pe.rotate(q, q, far, far)
