"""Translation invariance of every relative position encoding, inside a tiny causal LM: shifting
all positions by a constant changes no logit, in a full pass and through the KV cache
(prefill + one-token steps, positions from the context), with left padding.
Encodings opt in by declaring ``translation_invariant = True``; SPE is relative only in
expectation over its noise (tests/papers/test_positions_spe.py)."""
import pytest
import torch

import tevo
from tevo.nn.context import positions_from_mask
from tevo.registry import MIXERS, POSITIONS

RELATIVE = {"rope", "rope_bias", "xpos", "alibi", "t5_bias", "xl_relative", "shaw", "huang_rpe",
            "deberta", "kerple", "swin_cpb", "permute"}
EXTRA = [("diet", {"variant": "rel"}), ("randomized", {"base": "alibi"}),
         ("randomized", {"base": "rope"}), ("kerple", {"kernel": "power"}),
         ("t5_bias", {"bidirectional": False}), ("rope", {"scaling": "ntk", "factor": 4.0}),
         ("rope", {"layout": "interleaved", "rotary_dim": 0.5}),
         ("swin_cpb", {"width": 4, "shift": 8}), ("xpos", {"scale_base": 16.0})]


def _cases():
    out = [pytest.param(n, {}, id=n) for n in POSITIONS.names()
           if getattr(POSITIONS.get(n).obj, "translation_invariant", False) is True]
    out += [pytest.param(n, kw, id=f"{n}-" + "-".join(f"{k}={v}" for k, v in kw.items()))
            for n, kw in EXTRA]
    return out


def _model(name, kw):
    hooks = set(POSITIONS.get(name).obj.hooks)
    mixer = {"name": "softmax", "heads": 2}
    if "feature" in hooks:
        if "linear" not in MIXERS:
            pytest.skip("no registered kernel mixer accepts the feature hook yet")
        mixer = {"name": "linear", **MIXERS.get("linear").tiny}
    spec = {"name": name, **POSITIONS.get(name).tiny, **kw}
    return tevo.build_model({"arch": "gpt", "vocab_size": 50, "d_model": 16, "n_layers": 2,
                             "max_len": 64, "mixer": mixer, "position": spec}).eval()


def test_every_relative_encoding_declares_it():
    declared = {n for n in POSITIONS.names()
                if getattr(POSITIONS.get(n).obj, "translation_invariant", False) is True}
    assert RELATIVE <= declared, sorted(RELATIVE - declared)


@pytest.mark.parametrize("name,kw", _cases())
def test_scores_depend_only_on_relative_position_also_through_the_cache(name, kw):
    kw = dict(kw)
    c = kw.pop("shift", 13)
    torch.manual_seed(0)
    model = _model(name, kw)
    with torch.no_grad():                     # make every parameter of the encoding matter
        for p in model.pos.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    B, n = 2, 12
    ids = torch.randint(0, 50, (B, n))
    mask = torch.ones(B, n, dtype=torch.bool)
    mask[1, :3] = False
    pos = positions_from_mask(mask, n)
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        shifted = model(ids, attention_mask=mask, positions=pos + c).logits
        torch.testing.assert_close(shifted[mask], full[mask], atol=1e-4, rtol=1e-4)
        st = model.init_state(B)
        o = model(ids[:, :5], attention_mask=mask[:, :5], state=st, positions=pos[:, :5] + c)
        outs, st = [o.logits], o.state
        for t in range(5, n):
            o = model(ids[:, t:t + 1], state=st, positions=pos[:, t:t + 1] + c)
            outs.append(o.logits)
            st = o.state
        torch.testing.assert_close(torch.cat(outs, 1)[mask], full[mask], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["sinusoidal", "learned", "tupe", "diet"])
def test_absolute_encodings_do_see_the_shift(name):
    """The check above can fail: absolute encodings change under the same shift."""
    model = _model(name, {})
    ids = torch.randint(0, 50, (2, 12))
    pos = torch.arange(12).expand(2, -1)
    with torch.no_grad():
        for p in model.pos.parameters():
            p.add_(torch.randn_like(p) * 0.5)
        assert not torch.allclose(model(ids).logits, model(ids, positions=pos + 13).logits,
                                  atol=1e-4)


@pytest.mark.parametrize("position,mixer", [("alibi", "aan"), ("permute", "softmax"),
                                            ("spe", "softmax"), ("rope", "aan")])
def test_incompatible_pairing_is_refused_with_the_compatible_encodings(position, mixer):
    from tevo.errors import ConfigError
    if mixer not in MIXERS:
        pytest.skip(f"{mixer} is not registered")
    accepted = set(MIXERS.get(mixer).supports.positions)
    with pytest.raises(ConfigError) as e:
        tevo.build_model({"arch": "gpt", "vocab_size": 20, "d_model": 16, "n_layers": 1,
                          "mixer": {"name": mixer, **MIXERS.get(mixer).tiny},
                          "position": position})
    msg = str(e.value)
    assert "\n" not in msg and position in msg and mixer in msg
    valid = msg.split("(valid:")[1]
    for p in POSITIONS.names():
        fits = set(POSITIONS.get(p).obj.hooks) <= accepted
        assert (f" {p}," in valid or f" {p})" in valid) == fits, p
