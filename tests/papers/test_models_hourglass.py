"""Hourglass (Nawrot et al., 2022): the shift right by k − 1 before shortening keeps the model
causal for every shortening factor (and without it the same test fails); the shortened layers
see ceil(n / k) tokens; FLOPs at equal depth fall as the paper claims."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import tevo
from tevo.errors import ConfigError
from tevo.models import hourglass

V = 37


def model(factor, shorten="linear", upsample="linear", n_layers=3, **kw):
    torch.manual_seed(0)
    return tevo.build_model({"arch": "hourglass", "vocab_size": V, "d_model": 16,
                             "n_layers": n_layers, "max_len": 64, "position": "rope",
                             "mixer": {"name": "softmax", "heads": 2},
                             "extra": {"factor": factor, "shorten": shorten,
                                       "upsample": upsample, **kw}}).eval()


def leaks(m, n: int) -> list:
    """(t, earliest changed position) for every t whose change moves a logit before t."""
    ids = torch.randint(0, V, (1, n))
    base = m(ids).logits
    out = []
    for t in range(n):
        other = ids.clone()
        other[0, t] = (other[0, t] + 1) % V
        diff = (m(other).logits - base).abs().amax(-1)[0]              # (n,)
        changed = (diff > 1e-6).nonzero().flatten()
        assert len(changed) and changed.min() >= 0
        if changed.min() < t:
            out.append((t, int(changed.min())))
    return out


@pytest.mark.parametrize("factor", [1, 2, 3, 4])
@pytest.mark.parametrize("shorten,upsample", [("linear", "linear"), ("avg", "repeat")])
def test_changing_token_t_changes_no_logit_before_t_for_every_factor(factor, shorten, upsample):
    m = model(factor, shorten, upsample)
    for n in (12, 13):                                  # divisible by k or padded at the end
        assert leaks(m, n) == []


def test_without_the_shift_the_shortening_leaks_the_future(monkeypatch):
    monkeypatch.setattr(hourglass, "shift_right", lambda x, k: x)
    assert leaks(model(3), 12)                          # the test above can fail


def test_shortened_layers_see_ceil_n_over_k_tokens_and_bad_options_are_one_line():
    m = model(4, pre_layers=1, post_layers=1, n_layers=4)
    seen = []
    m.mid.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[1]))
    m(torch.randint(0, V, (2, 13)))
    assert seen == [4] and len(m.mid) == 2
    for extra, key in (({"factor": 0}, "factor"), ({"pre_layers": -1}, "pre_layers"),
                       ({"shorten": "max"}, "shorten"), ({"fator": 2}, "fator")):
        with pytest.raises(ConfigError, match=f"model.extra.{key}"):
            tevo.build_model({"arch": "hourglass", "n_layers": 3, "extra": extra})
    with pytest.raises(ConfigError, match="model.n_layers"):
        tevo.build_model({"arch": "hourglass", "n_layers": 2,
                          "extra": {"pre_layers": 1, "post_layers": 1}})


def test_flops_at_equal_depth_fall_with_the_shortening_factor():
    """The paper's efficiency claim at equal depth: 1 + 4 + 1 layers, the 4 middle ones at
    n / k, cost fewer FLOPs than 6 full layers, and fewer the larger k."""
    ids = torch.randint(0, V, (1, 256))

    def flops(m):
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            m(ids)
        return fc.get_total_flops()
    cfg = {"vocab_size": V, "d_model": 32, "n_layers": 6, "max_len": 256, "position": "rope",
           "mixer": {"name": "softmax", "heads": 2}}
    plain = flops(tevo.build_model({**cfg, "arch": "gpt"}))
    hg = [flops(tevo.build_model({**cfg, "arch": "hourglass", "extra": {"factor": k}}))
          for k in (2, 4)]
    assert plain > hg[0] > hg[1]
    assert hg[1] < 0.6 * plain
