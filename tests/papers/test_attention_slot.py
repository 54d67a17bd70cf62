"""Slot attention: permuting the initial slots permutes the final slots (equivariance) and
leaves token outputs unchanged; the attention is a softmax over slots; a naive Algorithm 1."""
import math

import torch

from tevo.nn.context import MixerContext
from tiny import make_mixer


def test_slot_attention_is_permutation_equivariant_over_slots():
    m = make_mixer("slot", False, slots=5, iters=3)
    x = torch.randn(2, 9, 16)
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1, 6:] = False
    s0 = torch.randn(2, 5, 16)
    perm = torch.tensor([3, 0, 4, 1, 2])
    slots, attn = m.run(x, s0, valid)
    slots_p, attn_p = m.run(x, s0[:, perm], valid)
    torch.testing.assert_close(slots_p, slots[:, perm], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(attn_p, attn[:, :, perm], atol=1e-5, rtol=1e-4)
    y = torch.einsum("bnk,bkd->bnd", attn, slots)
    y_p = torch.einsum("bnk,bkd->bnd", attn_p, slots_p)
    torch.testing.assert_close(y_p, y, atol=1e-5, rtol=1e-4)
    # the slots compete for tokens: each real token's weights sum to 1 over the slots
    torch.testing.assert_close(attn.sum(-1)[valid], torch.ones(int(valid.sum())))


def test_slot_attention_equals_naive_algorithm_1():
    m = make_mixer("slot", False, slots=3, iters=2)
    x = torch.randn(1, 7, 16)
    y, _ = m(x, MixerContext())
    slots = m.initial_slots(1)[0]
    inputs = m.norm_in(x[0])
    k, v = m.k(inputs), m.v(inputs)
    for _ in range(2):
        prev = slots
        q = m.q(m.norm_slots(slots))
        attn = torch.softmax(k @ q.t() / math.sqrt(16), dim=1)          # over slots
        w = attn / (attn.sum(0, keepdim=True) + 1e-8)                  # weighted mean
        slots = m.gru(w.t() @ v, prev)
        slots = slots + m.mlp(m.norm_mlp(slots))
    attn = torch.softmax(k @ m.q(m.norm_slots(slots)).t() / math.sqrt(16), dim=1)
    torch.testing.assert_close(y[0], attn @ slots, atol=1e-5, rtol=1e-4)
