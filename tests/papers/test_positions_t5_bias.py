"""T5 relative bias: the bucket function equals T5's (bidirectional and causal), and the bias
equals T5Attention.compute_bias with the same table, also for a decode step."""
import pytest
import torch

from tevo.positions.t5_bias import T5RelativeBias, t5_bucket


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 16), (64, 256)])
def test_t5_buckets_match_hf_bidirectional_and_causal(bidirectional, num_buckets, max_distance):
    from transformers.models.t5.modeling_t5 import T5Attention
    rel = torch.arange(-600, 601)[None, :] + torch.zeros(3, 1, dtype=torch.long)
    ref = T5Attention._relative_position_bucket(rel, bidirectional, num_buckets, max_distance)
    ours = t5_bucket(rel, bidirectional, num_buckets, max_distance)
    assert torch.equal(ours, ref)
    assert int(ours.min()) >= 0 and int(ours.max()) < num_buckets


@pytest.mark.parametrize("is_decoder", [False, True])
def test_t5_bias_equals_hf_compute_bias(is_decoder):
    from transformers import T5Config
    from transformers.models.t5.modeling_t5 import T5Attention
    cfg = T5Config(d_model=16, d_kv=8, num_heads=2, relative_attention_num_buckets=8,
                   relative_attention_max_distance=20, is_decoder=is_decoder)
    ref = T5Attention(cfg, has_relative_attention_bias=True)
    pe = T5RelativeBias(heads=2, num_buckets=8, max_distance=20, bidirectional=not is_decoder)
    with torch.no_grad():
        pe.table.weight.copy_(ref.relative_attention_bias.weight)
    n = 30
    pos = torch.arange(n).unsqueeze(0)
    q = torch.zeros(1, 2, n, 8)
    torch.testing.assert_close(pe.bias(q, q, pos, pos), ref.compute_bias(n, n))
    # a decode step at position n - 1 against the cached keys
    step = pe.bias(q[:, :, :1], q, pos[:, -1:], pos)
    torch.testing.assert_close(step, ref.compute_bias(1, n, past_seen_tokens=n - 1))
