"""Llama (GQA, rotary half layout, SwiGLU), Mistral (sliding window) and Qwen2: same logits
with left padding, same greedy tokens; Llama-style tevo models export to LlamaForCausalLM."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from tevo.interop.compare import (check_equivalence, greedy_hf, greedy_tevo,  # noqa: E402
                                  random_batch, randomize_)
from tevo.interop.hf import (ConversionError, UnsupportedHFOption, from_hf, to_hf,  # noqa: E402
                             tevo_to_hf)
from tevo.registry import MIXERS  # noqa: E402

TOL = 1e-5
V = 101
V5 = int(transformers.__version__.split(".")[0]) >= 5


def rope(theta=10000.0, kind="default", **extra) -> dict:
    """Rotary settings as this transformers version spells them."""
    if V5:
        return {"rope_parameters": {"rope_type": kind, "rope_theta": theta, **extra}}
    kw = {"rope_theta": theta}
    if kind != "default":
        kw["rope_scaling"] = {"rope_type": kind, **extra}
    return kw
BASE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=48, vocab_size=V, max_position_embeddings=64, initializer_range=0.1,
            bos_token_id=None, eos_token_id=None, attn_implementation="eager")


def make(model: str, **kw):
    cls = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
           "qwen2": "Qwen2ForCausalLM"}[model]
    cfg = {"llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config"}[model]
    hf_cfg = getattr(transformers, cfg)(**{**BASE, **kw})
    return randomize_(getattr(transformers, cls)(hf_cfg).eval())


CASES = {
    "llama-gqa": lambda: make("llama"),
    "llama-mqa-bias-tied-linear-rope": lambda: make(
        "llama", num_key_value_heads=1, attention_bias=True, mlp_bias=True,
        tie_word_embeddings=True, **rope(500.0, "linear", factor=2.0)),
    "llama-head-dim": lambda: make("llama", head_dim=16),
    "mistral-full": lambda: make("mistral", sliding_window=None),
    "qwen2": lambda: make("qwen2"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_with_padding(case):
    hf = CASES[case]()
    model = from_hf(hf)
    r = check_equivalence(hf, model, batch=3, n=16)
    assert r["max_abs_diff"] <= TOL, r


@pytest.mark.parametrize("case", ["llama-gqa", "qwen2"])
def test_greedy_generation_same_tokens(case):
    hf = CASES[case]()
    model = from_hf(hf)
    ids, mask = random_batch(V, batch=3, n=8, left=True, seed=2)
    assert torch.equal(greedy_tevo(model, ids, mask, 20), greedy_hf(hf, ids, mask, 20))


def test_mistral_sliding_window():
    hf = make("mistral", sliding_window=5)
    if "local" not in MIXERS:
        with pytest.raises(UnsupportedHFOption, match="sliding_window"):
            from_hf(hf)
        pytest.skip("waits for the sliding-window mixer 'local'")
    model = from_hf(hf)
    r = check_equivalence(hf, model, batch=3, n=16)
    assert r["max_abs_diff"] <= TOL, r
    ids, mask = random_batch(V, batch=3, n=8, left=True, seed=3)
    assert torch.equal(greedy_tevo(model, ids, mask, 20), greedy_hf(hf, ids, mask, 20))


@pytest.mark.parametrize("case", ["llama-gqa", "llama-mqa-bias-tied-linear-rope"])
def test_export_roundtrip(tmp_path, case):
    hf = CASES[case]()
    model = from_hf(hf)
    to_hf(model, tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "out", attn_implementation="eager").eval()
    assert type(back).__name__ == "LlamaForCausalLM"
    assert check_equivalence(back, model)["max_abs_diff"] <= TOL


def test_export_of_a_native_llama_style_model():
    from tevo import build_model
    model = build_model({
        "arch": "gpt", "vocab_size": V, "d_model": 32, "n_layers": 2, "max_len": 64,
        "mixer": {"name": "softmax", "heads": 4, "kv_heads": 2, "bias": False, "impl": "eager"},
        "ffn": {"name": "swiglu", "d_ff": 40}, "norm": "rmsnorm", "residual": "pre_ln",
        "position": {"name": "rope", "base": 10000.0}, "tie_embeddings": False}).eval()
    hf, _ = tevo_to_hf(model)
    hf.config._attn_implementation = "eager"
    assert check_equivalence(hf, model)["max_abs_diff"] <= TOL


def test_export_refuses_interleaved_rope():
    from tevo import build_model
    model = build_model({
        "arch": "gpt", "vocab_size": V, "d_model": 32, "n_layers": 1, "max_len": 64,
        "mixer": {"name": "softmax", "heads": 4, "bias": False}, "ffn": {"name": "swiglu"},
        "norm": "rmsnorm", "position": {"name": "rope", "layout": "interleaved"}})
    with pytest.raises(ConversionError, match="layout"):
        tevo_to_hf(model)


def test_unsupported_rope_type_is_named():
    hf = make("llama", **rope(1e4, "longrope", short_factor=[1.0] * 4, long_factor=[2.0] * 4,
                              original_max_position_embeddings=16))
    with pytest.raises(UnsupportedHFOption, match="rope_type"):
        from_hf(hf)


@pytest.mark.parametrize("kind,extra", [
    ("llama3", dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=16)),
    ("yarn", dict(factor=4.0, original_max_position_embeddings=16)),
    ("yarn", dict(factor=4.0, original_max_position_embeddings=16, mscale=0.707,
                  mscale_all_dim=1.0)),
    ("dynamic", dict(factor=4.0))], ids=["llama3", "yarn", "yarn-mscale", "dynamic"])
def test_rope_scaling_llama3_yarn_dynamic_match_hf(kind, extra):
    """Llama 3.1, YaRN and dynamic-NTK checkpoints import as ``rope`` options: same logits with
    left padding, and (dynamic: frequencies change as the context passes max_position) the same
    greedy tokens, KV-cached, past max_position_embeddings."""
    hf = make("llama", max_position_embeddings=12, **rope(1e4, kind, **extra))
    model = from_hf(hf)
    assert model.pos.scaling == kind
    assert check_equivalence(hf, model, batch=3, n=16)["max_abs_diff"] <= TOL
    ids, mask = random_batch(V, batch=2, n=8, left=True, seed=5)
    assert torch.equal(greedy_tevo(model, ids, mask, 12), greedy_hf(hf, ids, mask, 12))


@pytest.mark.parametrize("case", ["llama-gqa", "qwen2"])
def test_generation_runs_past_max_position_embeddings_as_hf(case):
    """A rotary model has no position table: HF decodes past max_position_embeddings without
    cropping the context, so the converted model must too (a window of 8 made the tokens
    diverge from step 3)."""
    hf = make(case.split("-")[0], max_position_embeddings=8)
    model = from_hf(hf)
    ids, mask = random_batch(V, batch=2, n=6, left=True, seed=4)
    want = greedy_hf(hf, ids, mask, 14)
    assert torch.equal(greedy_tevo(model, ids, mask, 14), want)
    from tevo.inference.generate import generate
    out = generate(model, ids, 14, greedy=True, use_cache=False, attention_mask=mask)
    assert torch.equal(out[:, ids.shape[1]:], want)


@pytest.mark.parametrize("max_window_layers,n_layers", [(1, 3), (0, 2)],
                         ids=["mixed-layers", "all-sliding"])
def test_qwen2_sliding_window_layers(max_window_layers, n_layers):
    """Qwen2 with use_sliding_window: the layers typed "sliding_attention" become ``local``
    (biased q/k/v, unbiased output), the others stay full; logits and greedy tokens match, and
    the documented override mixer.impl=eager reaches every layer (was refused outright)."""
    hf = make("qwen2", use_sliding_window=True, sliding_window=5,
              max_window_layers=max_window_layers, num_hidden_layers=n_layers)
    model = from_hf(hf)
    kinds = [type(b.sublayers[0]).__name__ for b in model.blocks.blocks]
    assert kinds == ["SoftmaxAttention" if t == "full_attention" else "LocalAttention"
                     for t in hf.config.layer_types]
    assert check_equivalence(hf, model, batch=3, n=16)["max_abs_diff"] <= TOL
    ids, mask = random_batch(V, batch=3, n=8, left=True, seed=3)
    assert torch.equal(greedy_tevo(model, ids, mask, 12), greedy_hf(hf, ids, mask, 12))
    eager = from_hf(hf, overrides=["mixer.impl=eager"])
    assert all(b.sublayers[0].impl == "eager" for b in eager.blocks.blocks)
    assert check_equivalence(hf, eager, batch=3, n=16)["max_abs_diff"] <= TOL


def test_mistral_documented_eager_override():
    model = from_hf(make("mistral", sliding_window=5), overrides=["mixer.impl=eager"])
    assert model.blocks.blocks[0].sublayers[0].impl == "eager"
