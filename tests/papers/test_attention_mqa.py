"""MQA / GQA: gqa with groups = heads equals softmax; the KV cache is heads× (heads/groups×)
smaller; each K/V head serves its own group of query heads; numbers equal Hugging Face Llama
(GQA) and Falcon (multi-query) attention with copied weights."""
import pytest
import torch

from papers.attention_reference import ctx, prefill_then_steps
from tiny import make_mixer

D, H = 32, 4


def test_gqa_with_groups_equal_heads_equals_softmax():
    for impl in ("sdpa", "eager"):
        for causal in (True, False):
            g = make_mixer("gqa", causal, d=D, heads=H, kv_heads=H, impl=impl)
            s = make_mixer("softmax", causal, d=D, heads=H, impl=impl)
            s.load_state_dict(g.state_dict())
            x = torch.randn(2, 9, D)
            mask = torch.ones(2, 9, dtype=torch.bool)
            mask[1, :3] = False
            y, _ = g(x, ctx(x, causal, mask))
            r, _ = s(x, ctx(x, causal, mask))
            torch.testing.assert_close(y[mask], r[mask], atol=1e-5, rtol=1e-4)


def test_mqa_cache_is_heads_times_smaller():
    x = torch.randn(2, 11, D)
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[0, :2] = False
    sizes = {}
    for name, kw in (("softmax", {}), ("mqa", {}), ("gqa", {"kv_heads": 2})):
        m = make_mixer(name, True, d=D, heads=H, **kw)
        inc, full, st = prefill_then_steps(m, x, mask, 6)
        torch.testing.assert_close(inc[mask], full[mask], atol=1e-5, rtol=1e-4)
        sizes[name] = st["k"].numel() + st["v"].numel()
    assert sizes["softmax"] == H * sizes["mqa"]
    assert sizes["softmax"] == (H // 2) * sizes["gqa"]


def test_each_kv_head_serves_its_group_of_query_heads():
    """GQA equals multi-head attention whose K/V projections repeat each group's K/V head for
    the h/G query heads of that group (head i uses group ⌊i·G/h⌋); MQA equals GQA with G = 1."""
    G, e = 2, D // H
    g = make_mixer("gqa", True, d=D, heads=H, kv_heads=G, impl="eager")
    s = make_mixer("softmax", True, d=D, heads=H, impl="eager")
    with torch.no_grad():
        s.q_proj.load_state_dict(g.q_proj.state_dict())
        s.o_proj.load_state_dict(g.o_proj.state_dict())
        for name in ("k_proj", "v_proj"):
            src, dst = getattr(g, name), getattr(s, name)
            for i in range(H):
                grp = i * G // H
                dst.weight[i * e:(i + 1) * e] = src.weight[grp * e:(grp + 1) * e]
                dst.bias[i * e:(i + 1) * e] = src.bias[grp * e:(grp + 1) * e]
    x = torch.randn(2, 7, D)
    torch.testing.assert_close(g(x, ctx(x, True))[0], s(x, ctx(x, True))[0], atol=1e-5, rtol=1e-4)
    mq = make_mixer("mqa", True, d=D, heads=H)
    g1 = make_mixer("gqa", True, d=D, heads=H, kv_heads=1)
    g1.load_state_dict(mq.state_dict())
    torch.testing.assert_close(mq(x, ctx(x, True))[0], g1(x, ctx(x, True))[0])


def _identity_rotary(B, n, e):
    return torch.ones(B, n, e), torch.zeros(B, n, e)


def test_gqa_equals_llama_attention():
    tr = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaAttention
    cfg = tr.LlamaConfig(hidden_size=D, num_attention_heads=H, num_key_value_heads=2,
                         intermediate_size=64, num_hidden_layers=1, vocab_size=10)
    cfg._attn_implementation = "eager"
    hf = LlamaAttention(cfg, 0).eval()
    m = make_mixer("gqa", True, d=D, heads=H, kv_heads=2, bias=False)
    m.load_state_dict(hf.state_dict())
    n = 9
    x = torch.randn(2, n, D)
    causal = torch.full((n, n), float("-inf")).triu(1)[None, None]
    ref, _ = hf(x, _identity_rotary(2, n, D // H), causal)
    y, _ = m(x, ctx(x, True))
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-4)


def test_mqa_equals_falcon_multi_query_attention():
    tr = pytest.importorskip("transformers")
    from transformers.models.falcon.modeling_falcon import FalconAttention
    cfg = tr.FalconConfig(hidden_size=D, num_attention_heads=H, multi_query=True,
                          new_decoder_architecture=False, alibi=False, bias=False,
                          num_hidden_layers=1, vocab_size=10)
    cfg._attn_implementation = "eager"
    hf = FalconAttention(cfg, 0).eval()
    m = make_mixer("mqa", True, d=D, heads=H, bias=False)
    e = D // H
    w = hf.query_key_value.weight                       # rows: [q (h·e) | k (e) | v (e)]
    with torch.no_grad():
        m.q_proj.weight.copy_(w[:H * e])
        m.k_proj.weight.copy_(w[H * e:H * e + e])
        m.v_proj.weight.copy_(w[H * e + e:])
        m.o_proj.weight.copy_(hf.dense.weight)
    n = 8
    x = torch.randn(2, n, D)
    causal = torch.full((n, n), float("-inf")).triu(1)[None, None]
    ref, _ = hf(x, None, causal, position_embeddings=_identity_rotary(2, n, e))
    y, _ = m(x, ctx(x, True))
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-4)


def test_bad_kv_heads_is_a_config_error():
    from tevo.errors import ConfigError
    for kv in (3, 0, 8):
        with pytest.raises(ConfigError):
            make_mixer("gqa", True, d=D, heads=H, kv_heads=kv)
