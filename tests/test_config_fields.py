"""Every config field is typed and ranged where it is declared: a bad value is a one-line
ConfigError naming the option and what is valid, raised before anything touches disk; a fuzz
over whole configs either builds and runs a model or raises ConfigError, nothing else."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tevo.cli import main
from tevo.config import DataConfig, ModelConfig, TrainConfig, load_config
from tevo.errors import ConfigError, TevoError
from tevo.registry import FFNS, MIXERS, MODELS, NORMS, POSITIONS, RESIDUALS

BAD = [("train.steps=abc", "train.steps"), ("train.steps=2.5", "train.steps"),
       ("train.steps=0", "train.steps"), ("model.mixer.heads=0", "heads"),
       ("model.mixer.heads=-4", "heads"), ("train.grad_clip=-1", "train.grad_clip"),
       ("train.weight_decay=-1", "train.weight_decay"),
       ("train.min_lr_ratio=5", "train.min_lr_ratio"), ('model.causal="false"', "model.causal"),
       ("model.ffn.mult=0", "mult"), ("train.lr=0", "train.lr"), ("train.lr=abc", "train.lr"),
       ("model.dropout=1.5", "model.dropout"), ("train.schedule=cosin", "train.schedule"),
       ("train.betas=[0.9, 2]", "train.betas"), ("data.seq_len=-3", "data.seq_len"),
       ("model.tie_embeddings=1", "model.tie_embeddings"), ("train.keep_last=-1", "keep_last"),
       ("train.max_minutes=0", "train.max_minutes"), ("model.d_model=16.5", "model.d_model"),
       ("train.no_decay=5", "train.no_decay"), ("train.extra=5", "train.extra"),
       ("model.layers=5", "model.layers"), ("train.out_dir=[1]", "train.out_dir"),
       ("name=true", "name")]


@pytest.mark.parametrize("override,name", BAD, ids=[b[0] for b in BAD])
def test_bad_value_is_a_one_line_error_naming_the_option(override, name):
    with pytest.raises(ConfigError) as e:
        load_config("default", [override])
    msg = str(e.value)
    assert name in msg and "\n" not in msg, msg


def test_valid_values_and_coercions():
    cfg = load_config("default", ["train.lr=1e-3", "train.grad_clip=0", "train.steps=20.0",
                                  "model.causal=true", "train.min_lr_ratio=1"])
    assert cfg.train.lr == 1e-3 and cfg.train.grad_clip == 0 and cfg.model.causal is True
    assert cfg.train.steps == 20 and type(cfg.train.steps) is int


def test_every_numeric_field_declares_a_range_or_is_unrestricted_on_purpose():
    """A new int/float field gets a declared range (option(...)); these few take any value."""
    free = set()
    missing = []
    for cls in (ModelConfig, DataConfig, TrainConfig):
        hints = __import__("typing").get_type_hints(cls)
        for f in dataclasses.fields(cls):
            t = hints[f.name]
            numeric = t in (int, float) or set(getattr(t, "__args__", ())) & {int, float}
            if numeric and "option" not in f.metadata and f"{cls.__name__}.{f.name}" not in free:
                missing.append(f"{cls.__name__}.{f.name}")
    assert not missing, missing


@pytest.mark.parametrize("text", ["model: [1, 2\n  d_model: 3", "\x00\x01\x02binary",
                                  "- just\n- a list\n", "model: 5\n", "train:\n  steps: abc\n"])
def test_malformed_config_file_is_one_line(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_bytes(text.encode("latin-1") if "\x00" not in text else b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError) as e:
        load_config(str(p))
    assert "\n" not in str(e.value)


def test_garbage_in_a_run_config_is_one_line_for_every_command(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: {d_model: [\n")
    for argv in (["eval", str(run)], ["generate", str(run)], ["train", "--resume", str(run)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: config") and "\n" not in err, err


def test_bad_values_fail_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "never"
    for ov in ("model.mixer.heads=-4", "train.steps=abc", "model.ffn.mult=0"):
        assert main(["train", "default", ov, f"train.out_dir={out}", "train.progress=false"]) == 2
        assert "\n" not in capsys.readouterr().err.strip()
        assert not out.exists()


# -- fuzz over whole configs --------------------------------------------------------------------
def _spec(reg, names):
    """A component spec with its tiny options, perhaps one of them set to an odd value."""
    def with_options(name):
        e = reg.get(name)
        value = st.sampled_from([0, -1, 1, 2, 3, 0.5, "x", True, None])
        odd = st.dictionaries(st.sampled_from(sorted(e.tiny) or ["dropout"]), value, max_size=1)
        return st.one_of(st.just({}), odd).map(lambda o: {"name": name, **e.tiny, **o})
    return st.sampled_from(names).flatmap(with_options)


CAUSAL_MIXERS = [n for n in MIXERS.names() if MIXERS.get(n).supports.causal
                 and getattr(MIXERS.get(n).supports, "text", True)]
ODD = {"d_model": [0, -16, "16", 16.5, 12], "n_layers": [0, -1, 1.5], "max_len": [0, 4],
       "vocab_size": [1, 0], "dropout": [-0.1, 1.0, "a"], "causal": ["false", 1, False],
       "arch": ["bert", "nope"], "tie_embeddings": ["yes"], "init_std": [-1]}
CONFIGS = st.fixed_dictionaries({
    "arch": st.just("gpt"), "d_model": st.just(16), "n_layers": st.sampled_from([1, 2]),
    "max_len": st.just(32), "vocab_size": st.just(32),
    "mixer": _spec(MIXERS, CAUSAL_MIXERS), "ffn": _spec(FFNS, FFNS.names()),
    "norm": st.sampled_from(NORMS.names()), "residual": st.sampled_from(RESIDUALS.names()),
    "position": st.sampled_from(POSITIONS.names()),
}).flatmap(lambda base: st.one_of(
    st.just(base),
    st.sampled_from(sorted(ODD)).flatmap(
        lambda k: st.sampled_from(ODD[k]).map(lambda v: {**base, k: v}))))


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(CONFIGS)
def test_fuzzed_configs_build_and_run_or_raise_config_error(model):
    try:
        cfg = load_config({"model": model})
        net = MODELS.get(cfg.model.arch).obj(cfg.model).eval()
    except TevoError:
        return
    ids = torch.randint(0, cfg.model.vocab_size, (2, 8))
    try:
        with torch.no_grad():
            out = net(ids)
    except TevoError:
        return
    logits = out.logits if hasattr(out, "logits") else out
    assert torch.isfinite(logits).all()
