"""DeBERTa: log buckets equal DebertaV2's, and softmax attention + the deberta bias equals HF's
DebertaV2 DisentangledSelfAttention (c2p + p2c, scale 1/√(3d)) with copied weights."""
import math

import torch

from tevo.positions.deberta import DebertaRelative, log_bucket_position
from tiny import ctx_for, make_mixer


def test_deberta_log_buckets_match_hf():
    from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position
    rel = torch.arange(-700, 701)
    for buckets, max_pos in [(256, 512), (8, 16), (32, 128)]:
        ref = make_log_bucket_position(rel, buckets, max_pos).long()
        assert torch.equal(log_bucket_position(rel, buckets, max_pos), ref)


def test_deberta_matches_hf_debertav2_attention():
    from transformers import DebertaV2Config
    from transformers.models.deberta_v2.modeling_deberta_v2 import DisentangledSelfAttention
    torch.manual_seed(4)
    d, h, n = 16, 2, 14
    cfg = DebertaV2Config(hidden_size=d, num_attention_heads=h, relative_attention=True,
                          pos_att_type=["c2p", "p2c"], position_buckets=8,
                          max_relative_positions=16, share_att_key=False,
                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ref = DisentangledSelfAttention(cfg).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.3)
    pe = DebertaRelative(d, heads=h, buckets=8, max_relative=16)
    with torch.no_grad():
        pe.rel_embeddings.weight.normal_()
        pe.pos_key_proj.load_state_dict(ref.pos_key_proj.state_dict())
        pe.pos_query_proj.load_state_dict(ref.pos_query_proj.state_dict())
    m = make_mixer("softmax", False, heads=h, impl="eager", scale=1 / math.sqrt(3 * d // h))
    with torch.no_grad():
        m.q_proj.load_state_dict(ref.query_proj.state_dict())
        m.k_proj.load_state_dict(ref.key_proj.state_dict())
        m.v_proj.load_state_dict(ref.value_proj.state_dict())
        m.o_proj.weight.copy_(torch.eye(d))
        m.o_proj.bias.zero_()
    x = torch.randn(2, n, d)
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, -4:] = False                                              # right padding
    y, _ = m(x, ctx_for(x, False, mask=mask, pos=pe))
    rel_emb = pe.norm(pe.rel_embeddings.weight)
    ext = (mask[:, None, :, None] & mask[:, None, None, :])          # HF's (B, 1, n, n) mask
    y_ref, _ = ref(x, ext, rel_embeddings=rel_emb)
    real = mask[:, :, None].expand_as(y)
    torch.testing.assert_close(y[real], y_ref[real], atol=1e-5, rtol=1e-4)
