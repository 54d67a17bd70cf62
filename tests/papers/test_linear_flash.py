"""FLASH mixed chunk attention: causal chunk form == recurrent form == masked reference
(outputs, state, gradients, with padding); equals the equation token by token; chunks of any
split continue exactly; linear cost; bounded state."""
import math

import pytest
import torch
import torch.nn.functional as F

from tevo.nn.context import MixerContext, positions_from_mask
from tiny import make_mixer
from papers.linear_reference import assert_rel_close, ctx, flops, forms_agree, left_padded


def test_causal_chunk_form_equals_recurrent():
    m = make_mixer("flash_linear", True, chunk=4)
    x, mask = left_padded(n=15)
    forms_agree(m, ["recurrent", "chunk", "parallel"], x, mask)


def test_bidirectional_chunk_form_equals_reference():
    m = make_mixer("flash_linear", False, chunk=4)
    x, mask = left_padded(n=13)
    mask = mask.flip(1)
    forms_agree(m, ["parallel", "chunk"], x, mask, causal=False)


@pytest.mark.parametrize("causal", [True, False])
def test_equals_mixed_chunk_equation(causal):
    C = 3
    m = make_mixer("flash_linear", causal, chunk=C)
    x = torch.randn(2, 8, 16)
    y, _ = m(x, ctx(x, causal))
    p = m.proj
    u, v, z = F.silu(p.uvz(x)).split([p.e, p.e, p.s], -1)
    qq, kq, ql, kl = (z * p.gamma[i] + p.beta[i] for i in range(4))
    out = torch.zeros(2, 8, p.e)
    for i in range(8):
        for j in range(8):
            same, earlier = i // C == j // C, j // C < i // C
            if same and (j <= i or not causal):
                out[:, i] += (F.relu((qq[:, i] * kq[:, j]).sum(-1) / math.sqrt(p.s)) ** 2
                              )[:, None] * v[:, j]
            if earlier or (not causal and not same) or (not causal and same):
                out[:, i] += (ql[:, i] * kl[:, j]).sum(-1, keepdim=True) * v[:, j]
        out[:, i] /= (i + 1) if causal else 8
    assert_rel_close(y, m.o_proj(u * out), 1e-5)


def test_any_split_of_the_sequence_continues_exactly():
    m = make_mixer("flash_linear", True, chunk=4)
    x, mask = left_padded(n=17)
    y_full, _ = m(x, ctx(x, True, mask))
    st, ys, s = m.init_state(2), [], 0
    for size in (5, 3, 1, 1, 6, 1):
        c = MixerContext(causal=True, key_padding_mask=mask[:, :s + size],
                         positions=positions_from_mask(mask[:, :s + size], size))
        y, st = m(x[:, s:s + size], c, st)
        ys.append(y)
        s += size
    assert_rel_close(torch.cat(ys, 1)[mask], y_full[mask], 1e-5)
    sizes = {k: tuple(v.shape) for k, v in st.items()}
    for _ in range(20):                                     # the state does not grow
        c = MixerContext(causal=True, positions=torch.zeros(2, 1, dtype=torch.long))
        _, st = m(torch.randn(2, 1, 16), c, st)
    assert {k: tuple(v.shape) for k, v in st.items()} == sizes


def test_chunk_cost_is_linear_in_n():
    m = make_mixer("flash_linear", True, chunk=16)
    f = {n: flops(lambda n=n: m(torch.randn(1, n, 16), ctx(torch.randn(1, n, 16), True)))
         for n in (256, 512)}
    assert 1.9 < f[512] / f[256] < 2.1
