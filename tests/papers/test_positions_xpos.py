"""xPos against a transcription of torchscale's XPOS (the authors' code), its relative property
and its decay."""
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
