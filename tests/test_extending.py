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


def _worked_example():
    """The sigmoid-attention block of docs/extending.md, run as written (registration stubbed,
    so the test does not add an entry to the shared registry)."""
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "docs" / "extending.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S)
                 if "class SigmoidAttention" in b)
    from tevo.registry import MIXERS

    class Stub:
        def register(self, *a, **kw):
            return lambda cls: cls
    code = block.replace("from tevo.registry import MIXERS", "")
    ns = {"MIXERS": Stub(), "__name__": "worked_example"}
    exec(compile(code, "docs/extending.md", "exec"), ns)
    assert "sigmoid_attention" not in MIXERS.names()      # the real registry is untouched
    return ns["SigmoidAttention"]


@pytest.mark.parametrize("causal", [True, False])
def test_docs_worked_example_runs_and_is_sigmoid_attention(causal):
    """The documented 20-line variant builds, follows eq. 2 with padding (explicit loop), keeps
    GQA and the KV cache working, and refuses the value hook like any attend override."""
    cls = _worked_example()
    torch.manual_seed(2)
    m = cls(D, heads=2, kv_heads=1).eval()
    x = torch.randn(B, N, D)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, :3] = False
    y, _ = m(x, ctx_for(x, causal, mask))
    e = D // 2
    with torch.no_grad():
        q = m.q_proj(x).view(B, N, 2, e)
        k, v = m.k_proj(x).view(B, N, 1, e), m.v_proj(x).view(B, N, 1, e)
        out = torch.zeros(B, N, 2, e)
        for b in range(B):
            for hh in range(2):
                for i in range(N):
                    keys = [j for j in range(N) if mask[b, j] and (j <= i or not causal)]
                    for j in keys:
                        s = q[b, i, hh] @ k[b, j, 0] / math.sqrt(e) - math.log(N)
                        out[b, i, hh] += torch.sigmoid(s) * v[b, j, 0]
        ref = m.o_proj(out.reshape(B, N, D))
    torch.testing.assert_close(y[mask], ref[mask], atol=1e-5, rtol=1e-4)
    assert "value" not in cls.supports.positions
