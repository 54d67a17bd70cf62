"""Reformer LSH attention: one bucket = shared-QK full attention; Hugging Face's Reformer numbers;
no attention to self unless alone; sorted chunked form == dense form; determinism."""
import math

import pytest
import torch

from tevo.errors import ConfigError
from tevo.mixers.attention.lsh import SELF_SCORE, sorted_structure
from tevo.nn.context import MixerContext
from tiny import make_mixer


def _shared_qk_full(m, x, causal, mask):
    """softmax over every allowed key of q_i·k_j, k_j = q_j/‖q_j‖, self score −1e5 (naive)."""
    B, n, _ = x.shape
    qk = m.qk_proj(x).view(B, n, m.heads, -1).transpose(1, 2)
    v = m.v_proj(x).view(B, n, m.heads, -1).transpose(1, 2)
    k = qk / torch.sqrt((qk ** 2).sum(-1, keepdim=True) + 1e-6 * qk.shape[-1])
    s = qk @ k.transpose(-1, -2)
    allowed = mask[:, None, None, :].expand_as(s).clone()
    if causal:
        allowed &= torch.ones(n, n, dtype=torch.bool).tril()
    s = s.masked_fill(~allowed, float("-inf"))
    s = s.masked_fill(torch.eye(n, dtype=torch.bool), SELF_SCORE)
    y = s.softmax(-1) @ v
    return m.o_proj(y.transpose(1, 2).reshape(B, n, -1))


def test_lsh_one_bucket_equals_shared_qk_full_attention():
    n = 10
    for causal in (True, False):
        m = make_mixer("lsh", causal, heads=2, buckets=1, rounds=2, chunk=n)
        x = torch.randn(2, n, 16)
        mask = torch.ones(2, n, dtype=torch.bool)
        if causal:
            mask[1, :3] = False
        else:
            mask[1, 7:] = False
        y, _ = m(x, MixerContext(causal=causal, key_padding_mask=mask))
        ref = _shared_qk_full(m, x, causal, mask)
        torch.testing.assert_close(y[mask], ref[mask], atol=1e-5, rtol=1e-4)


def _hf_pair(before, rounds, seed=3, d=16, h=2, e=8):
    transformers = pytest.importorskip("transformers")
    from transformers.models.reformer.modeling_reformer import ReformerAttention
    cfg = transformers.ReformerConfig(
        attn_layers=["lsh"], hidden_size=d, num_attention_heads=h, attention_head_size=e,
        num_buckets=4, num_hashes=rounds, lsh_attn_chunk_length=4, lsh_num_chunks_before=before,
        lsh_num_chunks_after=0, hash_seed=seed, is_decoder=False,
        lsh_attention_probs_dropout_prob=0.0)
    ref = ReformerAttention(cfg, 0).eval()
    m = make_mixer("lsh", False, d=d, heads=h, buckets=4, rounds=rounds, chunk=4,
                   chunks_before=before, chunks_after=0, seed=seed, chunking="global")
    with torch.no_grad():
        m.qk_proj.weight.copy_(ref.self_attention.query_key.weight)
        m.v_proj.weight.copy_(ref.self_attention.value.weight)
        m.o_proj.weight.copy_(ref.output.dense.weight)
    return m, ref


def test_lsh_matches_hugging_face_reformer():
    """HF ReformerAttention (random weights, hash_seed) vs lsh with copied weights: same seeded
    rotations, same buckets, same numbers — with padding and three hash rounds."""
    m, ref = _hf_pair(before=0, rounds=3)
    torch.testing.assert_close(m.rotations, (torch.manual_seed(3), torch.randn(2, 8, 3, 2))[1])
    x = torch.randn(2, 16, 16)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[1, 11:] = False
    with torch.no_grad():
        hf = ref.output(ref.self_attention(hidden_states=x, attention_mask=mask.long()).hidden_states)
        y, _ = m(x, MixerContext(causal=False, key_padding_mask=mask))
    torch.testing.assert_close(y[mask], hf[mask], atol=1e-5, rtol=1e-4)


def test_lsh_matches_hugging_face_with_previous_chunk_except_wraparound():
    """With one look-back chunk HF's first chunk of a round wraps around to the last chunk (of the
    previous round); lsh does not. Every token outside a first chunk must match exactly."""
    m, ref = _hf_pair(before=1, rounds=2)
    x = torch.randn(2, 16, 16)
    with torch.no_grad():
        hf = ref.output(ref.self_attention(hidden_states=x).hidden_states)
        y, _ = m(x, MixerContext(causal=False))
        qk = m._split(m.qk_proj(x))
        order, _, _ = sorted_structure(m._buckets(qk, torch.ones(2, 16, dtype=torch.bool)), 5, 4,
                                       "global")
    first = torch.zeros(2, 2, 16, dtype=torch.bool)
    for r in range(2):
        first.scatter_(2, order[:, :, r, :4], True)
    keep = ~first.any(1)                                   # (B, n): in no head's first chunk
    assert keep.sum() >= 6
    torch.testing.assert_close(y[keep], hf[keep], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(y[~keep], hf[~keep], atol=1e-3)   # the wrap-around is real


def _weights(m, x, causal, mask):
    """Attention weights of every head: values = one-hot token indicators (head_dim = n)."""
    B, n, _ = x.shape
    qk = m._split(m.qk_proj(x))
    eye = torch.eye(n).expand(B, m.heads, n, n)
    mode = m._mode(causal)
    return m.attend_sorted(qk, eye, mask, causal, mode), m.attend_dense(qk, eye, mask, causal,
                                                                         mode, n), qk


def test_lsh_no_self_attention_unless_alone_and_only_same_bucket_keys():
    n = 12
    m = make_mixer("lsh", True, d=2 * n, heads=2, buckets=4, rounds=2, chunk=3)
    x = torch.randn(2, n, 2 * n)
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, :2] = False
    w, _, qk = _weights(m, x, True, mask)                  # (B, h, n, n)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, n))
    assert (w.triu(1) == 0).all()                          # causal
    assert (w[1][:, mask[1]][:, :, ~mask[1]] == 0).all()   # real queries: no weight on padding
    b = m._buckets(qk, mask)                               # (B, h, r, n)
    same = (b.unsqueeze(-1) == b.unsqueeze(-2)).any(2)     # shares a bucket in some round
    assert (w[~same] == 0).all()
    diag = w.diagonal(dim1=-2, dim2=-1)                    # (B, h, n)
    alone = (same & torch.ones(n, n, dtype=torch.bool).tril(-1) & mask[:, None, None, :]).sum(-1) == 0
    assert (diag[~alone] < 1e-6).all() and (diag[alone & mask[:, None, :]] > 0.999).all()


@pytest.mark.parametrize("causal", [True, False])
def test_lsh_sorted_chunks_equal_dense_form(causal):
    n = 14
    for chunking in (("bucket",) if causal else ("global", "bucket")):
        m = make_mixer("lsh", causal, d=2 * n, heads=2, buckets=4, rounds=3, chunk=3,
                       chunks_before=1, chunks_after=0 if causal else 1, chunking=chunking)
        x = torch.randn(2, n, 2 * n)
        mask = torch.ones(2, n, dtype=torch.bool)
        mask[1, :4] = False
        ws, wd, _ = _weights(m, x, causal, mask)
        rows = mask[:, None, :].expand(-1, 2, -1)         # real queries, every head
        torch.testing.assert_close(ws[rows], wd[rows], atol=1e-6, rtol=1e-5)


def test_lsh_is_deterministic_given_seed():
    x = torch.randn(2, 12, 16)
    a = make_mixer("lsh", False, heads=2, buckets=4, chunk=3, seed=7)
    b = make_mixer("lsh", False, heads=2, buckets=4, chunk=3, seed=7)
    c = make_mixer("lsh", False, heads=2, buckets=4, chunk=3, seed=8)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b(x, MixerContext())[0], a(x, MixerContext())[0], atol=0, rtol=0)
    assert not torch.equal(a.rotations, c.rotations)


def test_lsh_rejects_bad_options():
    with pytest.raises(ConfigError, match="chunking"):
        make_mixer("lsh", True, heads=2, chunking="global")
    with pytest.raises(ConfigError, match="buckets"):
        make_mixer("lsh", False, heads=2, buckets=3)
