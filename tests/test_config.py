"""Bad configs fail at validation with a one-line ConfigError naming field, value and choices."""
import pytest

import tevo
from tevo.config import load_config
from tevo.errors import ConfigError

BASE = {"arch": "gpt", "d_model": 32, "n_layers": 1, "vocab_size": 50}


def _err(cfg, *needles):
    with pytest.raises(ConfigError) as ei:
        tevo.build_model(cfg)
    msg = str(ei.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg
    return msg


def test_unknown_mixer_lists_choices():
    _err({**BASE, "mixer": {"name": "sofmax"}}, "sofmax", "valid:", "softmax")


def test_heads_must_divide_d_model():
    _err({**BASE, "mixer": {"name": "softmax", "heads": 5}}, "heads", "5", "32")


def test_unknown_option_lists_valid_options():
    _err({**BASE, "mixer": {"name": "softmax", "hedas": 4}}, "hedas", "heads")


def test_unknown_field():
    _err({**BASE, "n_layer": 3}, "n_layer", "n_layers")


def test_unknown_arch():
    _err({**BASE, "arch": "gtp"}, "model.arch", "gpt")


def test_cache_requested_from_mixer_without_recurrent_form():
    from tevo.registry import MIXERS, Registry
    no_cache = [n for n in MIXERS.names() if not MIXERS.get(n).supports.cache
                and MIXERS.get(n).supports.causal]
    if not no_cache:
        pytest.skip("every causal mixer has a recurrent form")
    _err({**BASE, "cache": True, "mixer": {"name": no_cache[0], **MIXERS.get(no_cache[0]).tiny}},
         "cache", no_cache[0])


def test_bidirectional_only_mixer_in_causal_model():
    from tevo.registry import MIXERS
    bi = [n for n in MIXERS.names() if not MIXERS.get(n).supports.causal]
    if not bi:
        pytest.skip("no bidirectional-only mixer registered")
    _err({**BASE, "mixer": {"name": bi[0]}}, bi[0], "causal")


def test_position_hooks_must_fit_the_mixer():
    from tevo.registry import MIXERS, POSITIONS
    for m in MIXERS.names():
        acc = set(MIXERS.get(m).supports.positions)
        for p in POSITIONS.names():
            if not set(POSITIONS.get(p).obj.hooks) <= acc and MIXERS.get(m).supports.causal:
                _err({**BASE, "mixer": {"name": m}, "position": p}, p, "valid:")
                return
    pytest.skip("every position fits every mixer")


def test_dotted_overrides_and_yaml_round_trip(tmp_path):
    cfg = load_config("gpt2", ["model.n_layers=2", "model.mixer.heads=4", "model.d_model=64",
                               "train.lr=0.001", "model.position=sinusoidal"])
    assert cfg.model.n_layers == 2 and cfg.model.mixer["heads"] == 4 and cfg.train.lr == 0.001
    p = tmp_path / "c.yaml"
    p.write_text(cfg.to_yaml())
    again = load_config(str(p))
    assert again.to_dict() == cfg.to_dict()
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config("gpt2", ["model.n_layers"])


def test_per_layer_overrides_make_hybrids():
    cfg = {**BASE, "n_layers": 3, "mixer": {"name": "softmax", "heads": 2},
           "layers": {"1": {"ffn": {"name": "mlp", "activation": "relu", "mult": 2}}}}
    m = tevo.build_model(cfg)
    assert m.blocks.blocks[1].sublayers[1].fc1.out_features == 64
    assert m.blocks.blocks[0].sublayers[1].fc1.out_features == 128
    _err({**cfg, "layers": {"5": {"ffn": "mlp"}}}, "layer 5")


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="gpt2"):
        load_config("gtp2")


def test_token_ids_out_of_range_is_one_line_error():
    import torch
    from tevo.errors import InputError
    m = tevo.build_model({**BASE, "mixer": {"name": "softmax", "heads": 2}})
    with pytest.raises(InputError, match="outside the vocabulary"):
        m(torch.tensor([[1, 2, 50]]))
