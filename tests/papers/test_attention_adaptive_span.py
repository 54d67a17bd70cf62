"""Adaptive span: span → ∞ equals softmax; equals the paper's eq. 4 computed densely; the span
penalty reaches the model's loss and its gradient the spans; the cache keeps only the current
span; cost follows the learned span."""
import pytest
import torch

import tevo
from tevo.nn.context import positions_from_mask
from papers.attention_reference import (ToyBias, ctx, largest_intermediate, prefill_then_steps,
                                        qkv)
from tiny import make_mixer

D, H = 16, 2


def test_infinite_span_equals_softmax():
    n = 11
    for causal in (True, False):
        m = make_mixer("adaptive_span", causal, d=D, heads=H, max_span=32, ramp=4, init_span=1.0)
        s = make_mixer("softmax", causal, d=D, heads=H)
        s.load_state_dict(m.state_dict(), strict=False)
        x = torch.randn(2, n, D)
        mask = torch.ones(2, n, dtype=torch.bool)
        if causal:
            mask[1, :3] = False
        else:
            mask[1, 8:] = False
        y, _ = m(x, ctx(x, causal, mask))
        r, _ = s(x, ctx(x, causal, mask))
        torch.testing.assert_close(y[mask], r[mask], atol=1e-5, rtol=1e-4)


def _dense_eq4(m, x, mask, causal):
    """a_tr = m_z(t−r) exp(s_tr) / Σ_q m_z(t−q) exp(s_tq) with every t, r written out."""
    B, n, _ = x.shape
    q, k, v = qkv(m, x)
    e = q.shape[-1]
    s = (q @ k.transpose(-1, -2)) / e ** 0.5                          # (B, h, n, n)
    pos = positions_from_mask(mask, n)
    z = m.spans().view(1, -1, 1, 1)
    dist = pos[:, None, :, None] - pos[:, None, None, :]
    if not causal:
        dist = dist.abs()
    soft = ((m.ramp + z - dist) / m.ramp).clamp(0, 1)
    soft = soft * (dist >= 0) * (dist < m.max_span) * mask[:, None, None, :]
    w = soft * torch.exp(s - s.amax(-1, keepdim=True))
    w = w / w.sum(-1, keepdim=True)
    return m.o_proj((w @ v).transpose(1, 2).reshape(B, n, -1))


def test_equals_the_soft_masked_softmax_of_eq_4():
    for causal in (True, False):
        m = make_mixer("adaptive_span", causal, d=D, heads=H, max_span=6, ramp=2)
        with torch.no_grad():
            m.span_frac.copy_(torch.tensor([0.1, 0.55]))             # spans 0.6 and 3.3 tokens
        x = torch.randn(2, 13, D)
        mask = torch.ones(2, 13, dtype=torch.bool)
        if causal:
            mask[1, :4] = False                                      # left padding
        else:
            mask[1, 9:] = False                                      # right padding
        y, _ = m(x, ctx(x, causal, mask))
        torch.testing.assert_close(y[mask], _dense_eq4(m, x, mask, causal)[mask], atol=1e-5,
                                   rtol=1e-4)


def test_span_penalty_is_in_the_model_loss_and_trains_the_spans():
    lam = 0.5
    model = tevo.build_model({"arch": "gpt", "vocab_size": 31, "d_model": D, "n_layers": 2,
                              "max_len": 32, "mixer": {"name": "adaptive_span", "heads": H,
                                                       "max_span": 8, "ramp": 2,
                                                       "init_span": 0.25, "span_loss": lam}})
    out = model(torch.randint(0, 31, (2, 10)))
    spans = [b.sublayers[0].spans() for b in model.blocks.blocks]
    expected = sum(lam * z.mean() for z in spans)
    torch.testing.assert_close(torch.as_tensor(out.aux_loss), expected)
    out.aux_loss.backward()
    g = model.blocks.blocks[0].sublayers[0].span_frac.grad
    assert g is not None and (g > 0).all()         # the penalty pushes every span down


@pytest.mark.parametrize("enc", [None, "bias"])
def test_cache_keeps_only_the_current_span(enc):
    m = make_mixer("adaptive_span", True, d=D, heads=H, max_span=16, ramp=2)
    with torch.no_grad():
        m.span_frac.copy_(torch.tensor([0.05, 0.2]))                 # spans 0.8, 3.2 → D = 6
    pos = ToyBias(H) if enc else None
    x = torch.randn(3, 20, D)
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[1, :3], mask[2, :7] = False, False
    for k, chunk in ((6, 1), (2, 5)):
        inc, full, state = prefill_then_steps(m, x, mask, k, pos, chunk)
        torch.testing.assert_close(inc[mask], full[mask], atol=1e-5, rtol=1e-4)
        assert m.window() == 6 and state["k"].shape[2] == 5


def test_cost_follows_the_learned_span():
    m = make_mixer("adaptive_span", True, d=D, heads=H, max_span=512, ramp=4)
    x = torch.randn(1, 512, D)
    sizes = []
    for frac in (0.01, 0.04):
        with torch.no_grad():
            m.span_frac.fill_(frac)
        sizes.append(largest_intermediate(m, x, True))
    assert sizes[1] > 1.5 * sizes[0] and sizes[1] < H * 512 * 512 / 8


def test_bad_options_are_config_errors():
    from tevo.errors import ConfigError
    for kw in ({"max_span": 0}, {"ramp": 0}, {"init_span": 2.0}):
        with pytest.raises(ConfigError):
            make_mixer("adaptive_span", True, d=D, heads=H, **kw)
