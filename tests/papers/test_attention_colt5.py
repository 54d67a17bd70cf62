"""CoLT5: routing keeps exactly k tokens per branch; unrouted tokens get the light branch only;
the heavy branch is attention among routed tokens; routing losses reach the training loss."""
import math

import torch

import tevo
from tevo.nn.context import MixerContext
from tiny import make_mixer


def test_colt5_routing_keeps_exactly_k_tokens():
    m = make_mixer("colt5", False, heads=2, light_heads=1, window=2, routed_q=4, routed_kv=5,
                   heavy_ffn=2, routed_ffn=3)
    x = torch.randn(2, 12, 16)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 9:] = False
    heavy, qi, _ = m.heavy(x, mask)
    for b in range(2):
        rows = (heavy[b].abs().sum(-1) > 0).nonzero().flatten()
        assert len(rows) == 4 and set(rows.tolist()) == set(qi[b].tolist())
        assert mask[b, qi[b]].all()                        # padding is never routed
    # the whole mixer: tokens routed nowhere get exactly the light branch
    ctx = MixerContext(key_padding_mask=mask)
    y, _ = m(x, ctx)
    light = m.light(x, mask)
    fi = m.ffn_router(x, mask, 3)[0]
    touched = torch.zeros(2, 12, dtype=torch.bool)
    touched.scatter_(1, qi, True)
    touched.scatter_(1, fi, True)
    torch.testing.assert_close(y[~touched], light[~touched])
    assert not torch.allclose(y[touched], light[touched])
    assert (touched.sum(1) <= 4 + 3).all()


def test_colt5_heavy_branch_is_attention_among_routed_tokens():
    m = make_mixer("colt5", False, heads=2, light_heads=1, window=1, routed_q=3, routed_kv=4)
    x = torch.randn(1, 10, 16)
    valid = torch.ones(1, 10, dtype=torch.bool)
    heavy, qi, _ = m.heavy(x, valid)
    ki = m.kv_router(x, valid, 4)[0]
    gq = torch.sigmoid(m.q_router.w(x)).squeeze(-1)
    gk = torch.sigmoid(m.kv_router.w(x)).squeeze(-1)
    q = m.heavy_q(x[0, qi[0]]).view(3, 2, 8).transpose(0, 1)
    k, v = m.heavy_kv(x[0, ki[0]]).chunk(2, -1)
    k, v = k.view(4, 2, 8).transpose(0, 1), (v * gk[0, ki[0], None]).view(4, 2, 8).transpose(0, 1)
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), -1) @ v
    ref = m.heavy_out(a.transpose(0, 1).reshape(3, 16)) * gq[0, qi[0], None]
    torch.testing.assert_close(heavy[0, qi[0]], ref, atol=1e-5, rtol=1e-4)


def test_colt5_routing_loss_is_in_the_training_loss():
    model = tevo.build_model({"arch": "bert", "vocab_size": 50, "d_model": 16, "n_layers": 2,
                              "max_len": 64, "mixer": {"name": "colt5", "heads": 2,
                                                       "light_heads": 1, "window": 2,
                                                       "routed_q": 3, "routed_kv": 3,
                                                       "aux_weight": 0.5}})
    out = model(torch.randint(0, 50, (2, 10)))
    losses = out.extra["aux"]["colt5_routing"]
    assert len(losses) == 2                                # one per layer
    torch.testing.assert_close(out.aux_loss, sum(losses))
    assert out.aux_loss > 0
    out.aux_loss.backward()
    assert model.blocks.blocks[0].sublayers[0].q_router.w.weight.grad.abs().sum() > 0
