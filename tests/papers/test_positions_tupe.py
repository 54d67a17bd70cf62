"""TUPE: the bias equals the reference implementation's abs_pos_bias (+ TUPE-R's bucketed
relative bias with the [CLS] buckets), transcribed from guolinke/TUPE."""
import pytest
import torch

from tevo.errors import InputError
from tevo.positions.t5_bias import t5_bucket
from tevo.positions.tupe import TUPEPosition


def _reference(pe, seq_len):
    """guolinke/TUPE fairseq/modules/transformer_sentence_encoder.py, forward()."""
    weight = pe.pos_ln(pe.pos.weight[:seq_len + 1, :])
    pos_q, pos_k = pe.pos_proj(weight).reshape(seq_len + 1, 2, pe.heads, -1).permute(1, 2, 0, 3)
    pos_q = pos_q * pe.pos_scaling
    abs_pos_bias = torch.bmm(pos_q, pos_k.transpose(1, 2))
    cls_2_other = abs_pos_bias[:, 0, 0]
    other_2_cls = abs_pos_bias[:, 1, 1]
    abs_pos_bias = abs_pos_bias[:, 1:, 1:].clone()
    abs_pos_bias[:, :, 0] = other_2_cls.view(-1, 1)
    abs_pos_bias[:, 0, :] = cls_2_other.view(-1, 1)
    if pe.relative:
        ctx = torch.arange(seq_len)[:, None]
        mem = torch.arange(seq_len)[None, :]
        rp_bucket = t5_bucket(mem - ctx, True, pe.num_buckets, pe.max_distance)
        rp_bucket[:, 0] = pe.num_buckets
        rp_bucket[0, :] = pe.num_buckets // 2
        abs_pos_bias = abs_pos_bias + pe.rel_bias(rp_bucket).permute(2, 0, 1)
    return abs_pos_bias


@pytest.mark.parametrize("relative", [False, True])
def test_tupe_matches_reference_abs_pos_bias(relative):
    torch.manual_seed(5)
    pe = TUPEPosition(16, max_len=40, heads=2, relative=relative, num_buckets=8, max_distance=16)
    with torch.no_grad():
        for p in pe.parameters():
            p.normal_(0, 0.5)
    n = 30
    pos = torch.arange(n).unsqueeze(0)
    q = torch.zeros(1, 2, n, 8)
    out = pe.bias(q, q, pos, pos)[0]
    torch.testing.assert_close(out, _reference(pe, n), atol=1e-5, rtol=1e-4)
    # a decode step (query at n-1 against the cached keys) is the last row
    step = pe.bias(q[:, :, :1], q, pos[:, -1:], pos)[0, :, 0]
    torch.testing.assert_close(step, out[:, -1], atol=1e-5, rtol=1e-4)


def test_tupe_rejects_positions_past_its_table():
    pe = TUPEPosition(16, max_len=8, heads=2)
    pos = torch.arange(9).unsqueeze(0)
    with pytest.raises(InputError, match="max_len=8"):
        pe.bias(torch.zeros(1, 2, 9, 8), None, pos, pos)
