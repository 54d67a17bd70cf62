"""Softmax attention: equals torch.nn.MultiheadAttention with copied weights; fused == eager."""
import torch

from tevo.nn.context import MixerContext
from tiny import make_mixer


def _copy_into_mha(m, d, h):
    mha = torch.nn.MultiheadAttention(d, h, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([m.q_proj.weight, m.k_proj.weight, m.v_proj.weight]))
        mha.in_proj_bias.copy_(torch.cat([m.q_proj.bias, m.k_proj.bias, m.v_proj.bias]))
        mha.out_proj.weight.copy_(m.o_proj.weight)
        mha.out_proj.bias.copy_(m.o_proj.bias)
    return mha.eval()


def test_softmax_equals_torch_multihead_attention():
    d, h, n = 16, 4, 9
    for impl in ("sdpa", "eager"):
        for causal in (False, True):
            m = make_mixer("softmax", causal, d=d, heads=h, impl=impl)
            mha = _copy_into_mha(m, d, h)
            x = torch.randn(3, n, d)
            pad = torch.ones(3, n, dtype=torch.bool)
            pad[1, 6:] = False
            if causal:
                pad[:] = True
            y, _ = m(x, MixerContext(causal=causal, key_padding_mask=pad))
            am = torch.triu(torch.ones(n, n, dtype=torch.bool), 1) if causal else None
            ref, _ = mha(x, x, x, key_padding_mask=~pad, attn_mask=am, need_weights=False)
            torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-4)


def test_cross_attention_equals_torch_multihead_attention():
    d, h = 16, 2
    m = make_mixer("softmax", False, d=d, heads=h, cross=True)
    mha = _copy_into_mha(m, d, h)
    x, mem = torch.randn(2, 5, d), torch.randn(2, 7, d)
    y, _ = m(x, MixerContext(context=mem))
    ref, _ = mha(x, mem, mem, need_weights=False)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-4)


def test_fused_and_eager_paths_agree_with_bias():
    from tevo.nn.attention import eager_attention, sdpa_attention
    q, k, v = (torch.randn(2, 3, 6, 8) for _ in range(3))
    bias = torch.randn(1, 3, 6, 6)
    mask = torch.rand(2, 1, 6, 6) > 0.3
    torch.testing.assert_close(sdpa_attention(q, k, v, mask, bias), eager_attention(q, k, v, mask, bias),
                               atol=1e-5, rtol=1e-4)


def test_unmasked_causal_fast_path_equals_eager_reference():
    """Without padding the causal sdpa path builds no mask (is_causal); it equals the eager
    reference with an explicit causal mask, with and without grouped K/V heads."""
    from tiny import ctx_for
    for kv in (4, 2):
        fast = make_mixer("softmax", True, heads=4, kv_heads=kv, impl="sdpa")
        ref = make_mixer("softmax", True, heads=4, kv_heads=kv, impl="eager")
        ref.load_state_dict(fast.state_dict())
        x = torch.randn(2, 11, 16)
        y, _ = fast(x, ctx_for(x, True))
        y_ref, _ = ref(x, ctx_for(x, True))
        torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-4)
