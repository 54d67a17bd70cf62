"""The extension path of docs/extending.md: a softmax-score variant that only overrides
``attend`` is never bypassed, whatever the position encoding asks for."""
import math

import pytest
import torch

from tevo.errors import ConfigError
from tevo.mixers.attention.softmax import SoftmaxAttention
from tiny import B, D, N, ctx_for, make_position


class SigmoidAttention(SoftmaxAttention):
    """sigmoid(q k^T / √e - log n) v (Ramapuram et al., 2024), counting its calls."""

    calls = 0

    def attend(self, q, k, v, mask, bias, ctx):
        type(self).calls += 1
        k, v = self.repeat_kv(k), self.repeat_kv(v)
        s = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 - math.log(k.shape[2])
        if bias is not None:
            s = s + bias
        w = torch.sigmoid(s)
        if mask is not None:
            w = w.masked_fill(~mask, 0.0)
        return w @ v


def test_attend_override_drops_the_value_hook_and_refuses_it_in_one_line():
    assert "value" in SoftmaxAttention.supports.positions
    assert "value" not in SigmoidAttention.supports.positions          # config validation
    m = SigmoidAttention(D, heads=2).eval()
    x = torch.randn(B, N, D)
    with pytest.raises(ConfigError, match="value hook.*SigmoidAttention.attend"):
        m(x, ctx_for(x, True, pos=make_position("shaw")))


@pytest.mark.parametrize("position", [None, "rope", "alibi"])
@pytest.mark.parametrize("padded", [False, True])
def test_every_path_goes_through_attend(position, padded):
    """Causal unpadded (the fused shortcut), padded, with a bias, and cached: attend is called
    on every forward and the output is the sigmoid one, not softmax's."""
    torch.manual_seed(0)
    m = SigmoidAttention(D, heads=2).eval()
    ref = SoftmaxAttention(D, heads=2).eval()
    ref.load_state_dict(m.state_dict())
    pos = make_position(position) if position else None
    x = torch.randn(B, N, D)
    mask = None
    if padded:
        mask = torch.ones(B, N, dtype=torch.bool)
        mask[1, :3] = False
    SigmoidAttention.calls = 0
    y, _ = m(x, ctx_for(x, True, mask, pos=pos))
    assert SigmoidAttention.calls == 1
    y_ref, _ = ref(x, ctx_for(x, True, mask, pos=pos))
    assert not torch.allclose(y, y_ref, atol=1e-3)
    # one cached step after a prefill also goes through attend
    state = m.init_state(B)
    m(x[:, :N - 1], ctx_for(x[:, :N - 1], True, None if mask is None else mask[:, :N - 1],
                            pos=pos), state={} if state is None else state)
    assert SigmoidAttention.calls == 2
