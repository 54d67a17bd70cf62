"""GPT-2 and OpenAI GPT: import from transformers gives the same logits (with padding) and the
same greedy tokens; export → from_pretrained gives the same logits; unsupported options and
stray weights are errors."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from tevo.interop.compare import (check_equivalence, greedy_hf, greedy_tevo,  # noqa: E402
                                  random_batch, randomize_)
from tevo.interop.hf import (ConversionError, UnsupportedHFOption, from_hf, to_hf,  # noqa: E402
                             tevo_to_hf)

TOL = 1e-5
V = 101


def gpt2(**kw):
    c = dict(n_embd=32, n_layer=2, n_head=4, vocab_size=V, n_positions=64, initializer_range=0.1,
             bos_token_id=None, eos_token_id=None, attn_implementation="eager")
    c.update(kw)
    return randomize_(transformers.GPT2LMHeadModel(transformers.GPT2Config(**c)).eval())


def openai_gpt(**kw):
    c = dict(n_embd=32, n_layer=2, n_head=4, vocab_size=V, n_positions=64, initializer_range=0.1,
             attn_implementation="eager")
    c.update(kw)
    return randomize_(transformers.OpenAIGPTLMHeadModel(transformers.OpenAIGPTConfig(**c)).eval())


def opt(**kw):
    c = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
             max_position_embeddings=64, word_embed_proj_dim=32, vocab_size=V,
             bos_token_id=None, eos_token_id=None, attn_implementation="eager")
    c.update(kw)
    return randomize_(transformers.OPTForCausalLM(transformers.OPTConfig(**c)).eval())


CASES = {
    "gpt2": lambda: gpt2(),
    "gpt2-relu-untied-unscaled": lambda: gpt2(activation_function="relu", n_inner=48,
                                              tie_word_embeddings=False,
                                              scale_attn_weights=False),
    "gpt2-inverse-layer-scale": lambda: gpt2(scale_attn_by_inverse_layer_idx=True),
    "openai-gpt": lambda: openai_gpt(),
    "opt": lambda: opt(),
    "opt-post-ln": lambda: opt(do_layer_norm_before=False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_with_padding(case):
    hf = CASES[case]()
    model = from_hf(hf)
    r = check_equivalence(hf, model, batch=3, n=14)
    assert r["max_abs_diff"] <= TOL, r


@pytest.mark.parametrize("case", ["gpt2", "openai-gpt", "opt"])
def test_greedy_generation_same_tokens(case):
    hf = CASES[case]()
    model = from_hf(hf)
    ids, mask = random_batch(V, batch=3, n=8, left=True, seed=1)
    assert torch.equal(greedy_tevo(model, ids, mask, 20), greedy_hf(hf, ids, mask, 20))


def test_check_detects_a_wrong_weight():
    hf = gpt2()
    model = from_hf(hf)
    with torch.no_grad():
        model.blocks.blocks[1].sublayers[0].k_proj.weight[0, 0] += 0.5
    assert check_equivalence(hf, model)["max_abs_diff"] > 1e-3


@pytest.mark.parametrize("kw", [{}, {"tie_word_embeddings": False, "activation_function": "relu"}])
def test_export_roundtrip(tmp_path, kw):
    hf = gpt2(**kw)
    model = from_hf(hf)
    to_hf(model, tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "out", attn_implementation="eager").eval()
    assert type(back).__name__ == "GPT2LMHeadModel"
    assert check_equivalence(back, model)["max_abs_diff"] <= TOL
    again = from_hf(tmp_path / "out")                  # and the directory imports again
    assert check_equivalence(hf, again)["max_abs_diff"] <= TOL


def test_export_of_a_native_tevo_model():
    from tevo import build_model
    model = build_model("gpt2", vocab_size=V, d_model=32, n_layers=2, max_len=32,
                        mixer={"name": "softmax", "heads": 4, "impl": "eager"},
                        position={"name": "learned", "max_len": 32}).eval()
    hf, _ = tevo_to_hf(model)
    hf.config._attn_implementation = "eager"
    assert check_equivalence(hf, model)["max_abs_diff"] <= TOL


def test_export_refuses_what_gpt2_cannot_express():
    from tevo import build_model
    model = build_model("gpt2", vocab_size=V, d_model=32, n_layers=2, max_len=32,
                        residual="post_ln", mixer={"name": "softmax", "heads": 4, "bias": False})
    with pytest.raises(ConversionError, match="post_ln.*attention without biases|attention"):
        tevo_to_hf(model)


@pytest.mark.parametrize("kw,option", [
    ({"add_cross_attention": True}, "add_cross_attention"),
    ({"activation_function": "gelu_10"}, "activation_function"),
])
def test_unsupported_option_is_named(kw, option):
    hf = gpt2(**kw)
    with pytest.raises(UnsupportedHFOption, match=option):
        from_hf(hf)


def test_openai_gpt_unknown_activation_is_named():
    hf = openai_gpt()
    hf.config.afn = "tanh"
    with pytest.raises(UnsupportedHFOption, match="afn"):
        from_hf(hf)


def test_stray_weights_are_an_error():
    hf = transformers.GPT2ForSequenceClassification(transformers.GPT2Config(
        n_embd=32, n_layer=1, n_head=4, vocab_size=V, n_positions=32, num_labels=3,
        bos_token_id=None, eos_token_id=None, pad_token_id=0))
    with pytest.raises(ConversionError, match="score.weight"):
        from_hf(hf)


def test_unknown_model_type_lists_the_supported_ones():
    class Fake:
        config = transformers.PretrainedConfig()
        config.model_type = "no-such-model"

        def state_dict(self):
            return {}
    with pytest.raises(ConversionError, match="no-such-model.*gpt2"):
        from_hf(Fake())
