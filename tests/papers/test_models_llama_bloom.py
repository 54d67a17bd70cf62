"""The ``llama`` and ``bloom`` presets against the Hugging Face reference implementations
(LlamaForCausalLM, BloomForCausalLM): the same weights give the same logits."""
import pytest
import torch

import tevo

transformers = pytest.importorskip("transformers")


def _copy(dst, src):
    with torch.no_grad():
        dst.copy_(src)


def test_llama_preset_logits_match_hf_llama():
    """Pre-norm RMSNorm, SwiGLU, RoPE (half layout) and grouped-query attention, as in Llama."""
    torch.manual_seed(0)
    d, h, kv, ff, V, L = 64, 4, 2, 96, 101, 2
    hf_cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=d, intermediate_size=ff,
                                      num_hidden_layers=L, num_attention_heads=h,
                                      num_key_value_heads=kv, max_position_embeddings=64,
                                      rms_norm_eps=1e-5, rope_theta=500000.0,
                                      tie_word_embeddings=False, attention_bias=False,
                                      mlp_bias=False)
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    with torch.no_grad():                                 # non-trivial norm weights
        for n, p in hf.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    ours = tevo.build_model("llama", vocab_size=V, d_model=d, n_layers=L, max_len=64,
                            mixer={"name": "gqa", "heads": h, "kv_heads": kv, "bias": False},
                            ffn={"name": "swiglu", "d_ff": ff}).eval()
    assert ours.cfg.position == {"name": "rope", "base": 500000.0}
    _copy(ours.embed.weight, hf.model.embed_tokens.weight)
    for blk, lay in zip(ours.blocks.blocks, hf.model.layers):
        att, ffn = blk.sublayers
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            _copy(getattr(att, name).weight, getattr(lay.self_attn, name).weight)
        _copy(ffn.gate_proj.weight, lay.mlp.gate_proj.weight)
        _copy(ffn.up_proj.weight, lay.mlp.up_proj.weight)
        _copy(ffn.fc2.weight, lay.mlp.down_proj.weight)
        _copy(blk.residuals[0].norm.weight, lay.input_layernorm.weight)
        _copy(blk.residuals[1].norm.weight, lay.post_attention_layernorm.weight)
    _copy(ours.norm.weight, hf.model.norm.weight)
    _copy(ours.head.weight, hf.lm_head.weight)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())
    ids = torch.randint(0, V, (2, 17))
    with torch.no_grad():
        ref = hf(ids).logits
        out = ours(ids).logits
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    # and left-padded batches with cached decoding give the same next-token logits
    mask = torch.ones(2, 17, dtype=torch.long)
    mask[1, :4] = 0
    with torch.no_grad():
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        ref_p = hf(ids, attention_mask=mask, position_ids=pos).logits
        st = ours.init_state(2)
        o = ours(ids[:, :9], attention_mask=mask[:, :9].bool(), state=st)
        outs, st = [o.logits], o.state
        for t in range(9, 17):
            o = ours(ids[:, t:t + 1], state=st)
            outs.append(o.logits)
            st = o.state
    got = torch.cat(outs, 1)
    m = mask.bool()
    torch.testing.assert_close(got[m], ref_p[m], atol=2e-5, rtol=1e-4)


def test_bloom_preset_logits_match_hf_bloom():
    """ALiBi + a LayerNorm on the word embeddings (the `embedding_norm`), as in BLOOM."""
    torch.manual_seed(0)
    d, h, V, L = 64, 4, 103, 2
    hf_cfg = transformers.BloomConfig(vocab_size=V, hidden_size=d, n_layer=L, n_head=h,
                                      layer_norm_epsilon=1e-5, hidden_dropout=0.0,
                                      attention_dropout=0.0)
    hf = transformers.BloomForCausalLM(hf_cfg).eval()
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if "layernorm" in n or "ln_f" in n:
                p.uniform_(0.5, 1.5) if n.endswith("weight") else p.normal_(0, 0.1)
            elif n.endswith("bias"):
                p.normal_(0, 0.02)
    ours = tevo.build_model("bloom", vocab_size=V, d_model=d, n_layers=L, max_len=64,
                            mixer={"name": "softmax", "heads": h}).eval()
    tr = hf.transformer
    e = d // h
    _copy(ours.embed.weight, tr.word_embeddings.weight)
    _copy(ours.emb_norm.weight, tr.word_embeddings_layernorm.weight)
    _copy(ours.emb_norm.bias, tr.word_embeddings_layernorm.bias)
    for blk, lay in zip(ours.blocks.blocks, tr.h):
        att, ffn = blk.sublayers
        # BLOOM's fused qkv is laid out head by head: (h, 3, e, d)
        w = lay.self_attention.query_key_value.weight.view(h, 3, e, d)
        b = lay.self_attention.query_key_value.bias.view(h, 3, e)
        for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
            _copy(getattr(att, name).weight, w[:, i].reshape(h * e, d))
            _copy(getattr(att, name).bias, b[:, i].reshape(h * e))
        _copy(att.o_proj.weight, lay.self_attention.dense.weight)
        _copy(att.o_proj.bias, lay.self_attention.dense.bias)
        _copy(ffn.fc1.weight, lay.mlp.dense_h_to_4h.weight)
        _copy(ffn.fc1.bias, lay.mlp.dense_h_to_4h.bias)
        _copy(ffn.fc2.weight, lay.mlp.dense_4h_to_h.weight)
        _copy(ffn.fc2.bias, lay.mlp.dense_4h_to_h.bias)
        for r, ln in ((blk.residuals[0], lay.input_layernorm),
                      (blk.residuals[1], lay.post_attention_layernorm)):
            _copy(r.norm.weight, ln.weight)
            _copy(r.norm.bias, ln.bias)
    _copy(ours.norm.weight, tr.ln_f.weight)
    _copy(ours.norm.bias, tr.ln_f.bias)
    assert ours.head.weight is ours.embed.weight               # tied, as in BLOOM
    ids = torch.randint(0, V, (2, 15))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf(ids).logits, atol=2e-5, rtol=1e-4)
