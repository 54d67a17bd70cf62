"""GPT-NeoX (partial rotary, parallel attention + MLP with two norms), BLOOM (ALiBi, embedding
LayerNorm), Falcon (multi-query, parallel block, new decoder architecture), GPT-J (interleaved
partial rotary, parallel block) and Phi: same logits with left padding and the same greedy
tokens."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from tevo.interop.compare import (check_equivalence, greedy_hf, greedy_tevo,  # noqa: E402
                                  random_batch, randomize_)
from tevo.interop.hf import UnsupportedHFOption, from_hf  # noqa: E402

TOL = 1e-5
V = 101
V5 = int(transformers.__version__.split(".")[0]) >= 5
COMMON = dict(vocab_size=V, bos_token_id=None, eos_token_id=None, attn_implementation="eager")


def neox(**kw):
    c = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=64, **COMMON)
    c.update(kw)
    return randomize_(transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**c)).eval())


def bloom(**kw):
    c = dict(hidden_size=32, n_layer=2, n_head=4, **COMMON)
    c.update(kw)
    return randomize_(transformers.BloomForCausalLM(transformers.BloomConfig(**c)).eval())


def falcon(**kw):
    c = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=64, **COMMON)
    c.update(kw)
    return randomize_(transformers.FalconForCausalLM(transformers.FalconConfig(**c)).eval())


def gptj(**kw):
    c = dict(n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=64, **COMMON)
    c.update(kw)
    return randomize_(transformers.GPTJForCausalLM(transformers.GPTJConfig(**c)).eval())


def phi(**kw):
    c = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=64, max_position_embeddings=64, **COMMON)
    c.update(kw)
    return randomize_(transformers.PhiForCausalLM(transformers.PhiConfig(**c)).eval())


CASES = {
    "neox-parallel-partial-rotary": lambda: neox(),
    "neox-sequential-no-bias-full-rotary": lambda: neox(
        use_parallel_residual=False, attention_bias=False,
        **({"rope_parameters": {"rope_type": "default", "rope_theta": 500.0,
                                "partial_rotary_factor": 1.0}} if V5 else
           {"rotary_emb_base": 500.0, "rotary_pct": 1.0})),
    "bloom": lambda: bloom(),
    "bloom-6-heads": lambda: bloom(hidden_size=36, n_head=6),
    "falcon-mqa-parallel": lambda: falcon(),
    "falcon-mha-sequential-bias": lambda: falcon(multi_query=False, parallel_attn=False,
                                                 bias=True),
    "falcon-new-arch-2-norms": lambda: falcon(new_decoder_architecture=True, num_kv_heads=2),
    "falcon-new-arch-1-norm": lambda: falcon(new_decoder_architecture=True, num_kv_heads=2,
                                             num_ln_in_parallel_attn=1, bias=True),
    "gptj": lambda: gptj(),
    "phi": lambda: phi(),
}


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_with_padding(case):
    hf = CASES[case]()
    model = from_hf(hf)
    r = check_equivalence(hf, model, batch=3, n=16)
    assert r["max_abs_diff"] <= TOL, r


@pytest.mark.parametrize("case", ["neox-parallel-partial-rotary", "bloom",
                                  "falcon-new-arch-2-norms", "gptj"])
def test_greedy_generation_same_tokens(case):
    hf = CASES[case]()
    model = from_hf(hf)
    ids, mask = random_batch(V, batch=3, n=8, left=True, seed=4)
    assert torch.equal(greedy_tevo(model, ids, mask, 20), greedy_hf(hf, ids, mask, 20))


def test_neox_parallel_block_is_tevo_p_layout_with_folded_norms():
    hf = CASES["neox-parallel-partial-rotary"]()
    model = from_hf(hf)
    assert model.cfg.layout == "p"
    norm = model.blocks.blocks[0].residuals[0].norm
    assert torch.equal(norm.weight, torch.ones_like(norm.weight))
    assert model.pos.rotary_dim == 2                      # 0.25 of head_dim 8 (the default)


@pytest.mark.parametrize("make,option", [
    (lambda: falcon(alibi=True), "alibi"),
    (lambda: bloom(apply_residual_connection_post_layernorm=True),
     "apply_residual_connection_post_layernorm"),
    (lambda: phi(qk_layernorm=True), "qk_layernorm"),
])
def test_unsupported_option_is_named(make, option):
    with pytest.raises(UnsupportedHFOption, match=option):
        from_hf(make())
