"""Luna: pack (P attends to X) then unpack (X attends to the packed slots) equals the two
softmax attentions written out; with p fixed the cost is linear in n; padding is ignored."""
import torch

from tiny import make_mixer
from papers.linear_reference import assert_rel_close, ctx, flops


def _attn(q, k, v, h, mask=None):
    e = q.shape[-1] // h
    out = []
    for hh in range(h):
        sl = slice(hh * e, (hh + 1) * e)
        s = q[:, sl] @ k[:, sl].T / e ** 0.5
        if mask is not None:
            s = s.masked_fill(~mask[None, :], float("-inf"))
        out.append(s.softmax(-1) @ v[:, sl])
    return torch.cat(out, -1)


def test_pack_unpack_equals_formula_and_cost_is_linear():
    m = make_mixer("luna", False, p=3)
    x = torch.randn(2, 10, 16)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 7:] = False
    y, _ = m(x, ctx(x, False, mask))
    for b in range(2):
        P = m.P
        yp = m.po_proj(_attn(m.pq_proj(P), m.pk_proj(x[b]), m.pv_proj(x[b]), 2, mask[b]))
        yx = _attn(m.uq_proj(x[b]), m.uk_proj(yp), m.uv_proj(yp), 2)
        assert_rel_close(y[b][mask[b]], m.o_proj(yx)[mask[b]], 1e-5)
    f = {n: flops(lambda n=n: m(torch.randn(1, n, 16), ctx(torch.randn(1, n, 16), False)))
         for n in (256, 512)}
    assert 1.9 < f[512] / f[256] < 2.1
