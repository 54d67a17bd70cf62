"""Switch Transformers (Fedus et al., 2021) and GShard (Lepikhin et al., 2020): top-1 / top-2
routing, expert capacity with dropped tokens passed through by the residual, and the
load-balancing loss α·E·Σ f_i P_i collected through the context."""
import math

import pytest
import torch

import tevo
from tevo.nn.context import MixerContext


def _moe(**kw):
    spec = {"name": "moe", "experts": 4, "mult": 2, "capacity_factor": None,
            "eval_capacity_factor": None, **kw}
    return tevo.build("ffn", spec, d_model=16)


def test_top1_and_top2_routing_match_reference():
    torch.manual_seed(0)
    x = torch.randn(3, 8, 16)
    for k in (1, 2):
        moe = _moe(top_k=k).train()
        ctx = MixerContext()
        y = moe(x, ctx)
        xt = x.reshape(-1, 16)
        p = (xt @ moe.router.weight.T).softmax(-1)
        ref = torch.zeros_like(xt)
        for t in range(xt.shape[0]):
            g, e = p[t].topk(k)
            if k == 2:
                g = g / g.sum()                           # GShard: normalised top-2 gates
            for gi, ei in zip(g, e):                      # Switch: y = p_e(x)·E_e(x)
                ref[t] += gi * moe.experts[int(ei)](xt[t:t + 1])[0]
        torch.testing.assert_close(y.reshape(-1, 16), ref, atol=1e-5, rtol=1e-4)
        # balance loss, Switch eq. 4: α·E·Σ_i f_i·P_i with f from the first choices
        f = torch.bincount(p.argmax(-1), minlength=4).float() / xt.shape[0]
        (aux,) = ctx.aux["moe_balance"]
        torch.testing.assert_close(aux, 0.01 * 4 * (f * p.mean(0)).sum())
    # perfectly balanced routing gives the minimum value α (f_i = P_i = 1/E)
    bal = _moe(top_k=1).train()
    with torch.no_grad():                                  # token t goes to expert t
        bal.router.weight.zero_()
        bal.router.weight[:, :4] = 50 * torch.eye(4)
    xb = torch.zeros(1, 4, 16)
    xb[0, :, :4] = torch.eye(4)
    ctx = MixerContext()
    bal(xb, ctx)
    assert ctx.aux["moe_balance"][0].item() == pytest.approx(0.01, rel=1e-3)


def test_capacity_drops_overflow_tokens_which_pass_through_the_residual():
    torch.manual_seed(0)
    moe = _moe(top_k=1, capacity_factor=1.0).train()
    with torch.no_grad():                                  # every token prefers expert 0
        moe.router.weight.zero_()
        moe.router.weight[0, 0] = 10.0
    x = torch.randn(2, 8, 16)
    x[..., 0] = 1.0
    y = moe(x, MixerContext())
    C = math.ceil(1.0 * 16 * 1 / 4)                       # eq. 3: ⌈cf·T·k/E⌉ = 4 slots
    assert moe.capacity(16) == C
    served = (y.reshape(-1, 16).abs().sum(-1) > 0)
    assert served.tolist() == [True] * C + [False] * (16 - C)      # first come, first served
    assert moe.last_stats["dropped_fraction"] == pytest.approx(12 / 16)
    # in a pre-LN block the dropped tokens pass through unchanged (x + 0)
    res = tevo.build("residual", "pre_ln", d_model=16)
    out = res(x, lambda h: moe(h, MixerContext())).reshape(-1, 16)
    *_, kept = moe.route(res.norm(x).reshape(-1, 16), torch.ones(16, dtype=torch.bool))
    dropped = ~kept[:, 0]
    assert dropped.sum() == 16 - C
    torch.testing.assert_close(out[dropped], x.reshape(-1, 16)[dropped])
    assert not torch.allclose(out[~dropped], x.reshape(-1, 16)[~dropped])
    # top-2: second choices are served only after every first choice
    two = _moe(top_k=2, capacity_factor=1.0).train()
    with torch.no_grad():
        two.router.weight.zero_()
        two.router.weight[0, 0] = 10.0
        two.router.weight[1, 0] = 5.0
    _, _, experts, _, kept2 = two.route(x.reshape(-1, 16), torch.ones(16, dtype=torch.bool))
    C2 = two.capacity(16)                                  # ⌈16·2/4⌉ = 8
    assert (experts[:, 0] == 0).all() and (experts[:, 1] == 1).all()
    assert kept2[:, 0].sum() == C2 and kept2[:, 1].sum() == C2


def test_padding_is_not_routed_and_aux_reaches_the_model_loss():
    torch.manual_seed(0)
    moe = _moe(top_k=1, capacity_factor=1.0).train()
    x = torch.randn(2, 6, 16)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, :3] = False
    y = moe(x, MixerContext(key_padding_mask=mask))
    assert (y[~mask] == 0).all()
    assert moe.capacity(9) == math.ceil(9 / 4)             # capacity counts real tokens only
    model = tevo.build_model({"arch": "gpt", "vocab_size": 40, "d_model": 32, "n_layers": 2,
                              "max_len": 16, "mixer": {"name": "softmax", "heads": 4},
                              "ffn": {"name": "moe", "experts": 4, "top_k": 2,
                                      "expert": {"name": "swiglu"}}}).train()
    out = model(torch.randint(0, 40, (2, 10)))
    aux = out.extra["aux"]["moe_balance"]
    assert len(aux) == 2                                   # one per layer
    torch.testing.assert_close(torch.as_tensor(out.aux_loss), sum(aux))
    out.aux_loss.backward()
    assert model.blocks.blocks[0].sublayers[1].router.weight.grad.abs().sum() > 0
    for bad in ({"top_k": 3}, {"experts": 0}, {"capacity_factor": -1.0}):
        with pytest.raises(tevo.ConfigError):
            _moe(**bad)
