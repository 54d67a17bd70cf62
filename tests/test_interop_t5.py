"""T5 v1.0 (ReLU, tied and rescaled head) and v1.1 (gated GELU, untied head, d_kv ≠ d/h):
relative position buckets with separate encoder and decoder tables; same logits with padded
sources and targets; same greedy tokens with tevo's cached decoder."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from tevo.interop.compare import check_equivalence, random_batch, randomize_  # noqa: E402
from tevo.interop.hf import UnsupportedHFOption, from_hf  # noqa: E402

TOL = 1e-5
V = 101


def t5(**kw):
    c = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, vocab_size=V,
             relative_attention_num_buckets=8, relative_attention_max_distance=12,
             attn_implementation="eager")
    c.update(kw)
    return randomize_(transformers.T5ForConditionalGeneration(transformers.T5Config(**c)).eval())


CASES = {
    "t5-v1.0": lambda: t5(),
    "t5-v1.1": lambda: t5(feed_forward_proj="gated-gelu", tie_word_embeddings=False, d_kv=6,
                          num_decoder_layers=3),
}


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_with_padding(case):
    hf = CASES[case]()
    model = from_hf(hf)
    r = check_equivalence(hf, model, batch=3, n=20)      # distances reach the log buckets
    assert r["max_abs_diff"] <= TOL, r


@pytest.mark.parametrize("kw", [{}, {"feed_forward_proj": "gated-gelu",
                                     "tie_word_embeddings": False}])
def test_greedy_generation_same_tokens(kw):
    hf = t5(**kw)           # (transformers' generate breaks with num_decoder_layers != num_layers)
    model = from_hf(hf)
    src, mask = random_batch(V, batch=3, n=10, left=False, seed=5, pad_id=0)
    start = hf.config.pad_token_id                     # T5 starts decoding from the pad id
    with torch.no_grad():
        ref = hf.generate(input_ids=src, attention_mask=mask, max_new_tokens=20,
                          min_new_tokens=20, do_sample=False, num_beams=1, eos_token_id=None,
                          decoder_start_token_id=start)
    ours = model.greedy(src, bos=start, eos=None, max_len=20, src_mask=mask)
    assert torch.equal(ours, ref[:, 1:])


def test_encoder_and_decoder_have_their_own_bucket_tables():
    hf = CASES["t5-v1.0"]()
    model = from_hf(hf)
    assert model.pos.bidirectional and not model.dec_pos.bidirectional
    assert torch.equal(model.dec_pos.table.weight,
                       hf.decoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight)


def test_unsupported_activation_is_named():
    hf = t5(feed_forward_proj="gated-gelu_10")
    with pytest.raises(UnsupportedHFOption, match="feed_forward_proj"):
        from_hf(hf)
