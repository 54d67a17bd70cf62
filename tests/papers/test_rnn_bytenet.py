"""ByteNet: the receptive field of a stack of blocks doubles with every layer (dilations
1, 2, 4, ..., measured by the support of the input gradient), only towards the past in the
decoder; the dilated masked convolution equals its explicit sum; decoding keeps a fixed buffer."""
import pytest
import torch

from tevo.errors import ConfigError
from tevo.registry import MIXERS
from papers.linear_reference import (assert_rel_close, ctx, left_padded, prefill_then_steps)


def _block(layer, causal=True, **kw):
    spec = {"name": "bytenet", "max_dilation": 16, "hidden": 16, **kw}
    torch.manual_seed(layer)
    return MIXERS.build(spec, d_model=16, max_len=128, causal=causal, layer=layer, n_layers=8,
                        dropout=0.0).eval()


def _support(blocks, n, t, causal):
    x = torch.randn(1, n, 16, requires_grad=True)
    h = x
    for b in blocks:                                         # residual stack, as in the model
        h = h + b(h, ctx(h, causal))[0]
    (h[0, t] * torch.randn(16)).sum().backward()
    return (x.grad[0].abs().sum(-1) > 0).nonzero().squeeze(1)


@pytest.mark.parametrize("kernel", [2, 3])
def test_receptive_field_doubles_per_layer(kernel):
    blocks = [_block(layer, kernel=kernel) for layer in range(5)]
    assert [b.dilation for b in blocks] == [1, 2, 4, 8, 16]
    n = 70
    t = n - 1
    fields = []
    for L in range(1, 6):
        sup = _support(blocks[:L], n, t, True)
        assert sup.max().item() == t                         # causal: nothing after t
        fields.append(t - sup.min().item() + 1)
        assert len(sup) == fields[-1]                        # a contiguous window
    assert fields == [1 + (kernel - 1) * (2 ** L - 1) for L in range(1, 6)]
    grown = [f - 1 for f in fields]                          # the part the layers add
    assert all(b == 2 * a + (kernel - 1) for a, b in zip(grown, grown[1:]))
    # the cycle restarts after max_dilation
    assert _block(5, kernel=kernel).dilation == 1 and _block(9, kernel=kernel).dilation == 16


def test_encoder_receptive_field_is_centred():
    blocks = [_block(layer, causal=False, kernel=3) for layer in range(4)]
    n, t = 64, 32
    sup = _support(blocks, n, t, False)
    assert sup.min().item() == t - 15 and sup.max().item() == t + 15


def test_dilated_masked_convolution_equals_explicit_sum():
    m = _block(2, kernel=3)                                  # dilation 4
    x, mask = left_padded(n=14, d=16)
    y, _ = m(x, ctx(x, True, mask))
    h = torch.relu(m.norm2(m.w1(torch.relu(m.norm1(x))))) * mask[..., None]
    W = m.conv.weight.view(m.hidden, 3, m.hidden)            # (out, tap, in)
    conv = torch.zeros_like(h)
    for t in range(14):
        conv[:, t] = m.conv.bias
        for j in range(3):
            if t - 4 * j >= 0:
                conv[:, t] += h[:, t - 4 * j] @ W[:, j].T
    ref = m.w2(torch.relu(m.norm3(conv)))
    assert_rel_close(y[mask], ref[mask], 1e-5)
    y_inc, y_full, st = prefill_then_steps(m, x, mask)
    assert_rel_close(y_inc[mask], y_full[mask], 1e-5)
    assert st["buf"].shape == (2, 8, 16)                     # (k − 1)·r inputs, fixed


@pytest.mark.parametrize("bad", [{"kernel": 0}, {"max_dilation": 3}, {"hidden": -2}])
def test_bytenet_bad_options_are_one_line_config_errors(bad):
    with pytest.raises(ConfigError) as e:
        _block(0, **bad)
    assert "\n" not in str(e.value) and next(iter(bad)) in str(e.value)
