"""Nyströmformer: m = n landmarks equal softmax attention; numbers equal Hugging Face's
NystromformerSelfAttention; the iterative pseudo-inverses converge to torch.linalg.pinv."""
import pytest
import torch

from tevo.mixers.linear.landmarks import pinv, segment_means
from tiny import make_mixer
from papers.linear_reference import assert_rel_close, ctx


def _softmax_reference(m, x, mask=None):
    B, n, _ = x.shape
    h, e = m.heads, m.head_dim
    q, k, v = (p(x).view(B, n, h, e).transpose(1, 2) for p in (m.q_proj, m.k_proj, m.v_proj))
    s = q @ k.transpose(-1, -2) / e ** 0.5
    if mask is not None:
        s = s.masked_fill(~mask[:, None, None, :], float("-inf"))
    return m.o_proj((s.softmax(-1) @ v).transpose(1, 2).reshape(B, n, h * e))


def test_landmarks_equal_n_is_softmax():
    n = 10
    m = make_mixer("nystrom", False, landmarks=n, pinv_method="exact").double()
    x = torch.randn(2, n, 16, dtype=torch.float64)
    assert_rel_close(m(x, ctx(x, False))[0], _softmax_reference(m, x), 1e-8)
    m.pinv_method, m.pinv_iters = "razavi", 40            # the paper's iteration converges too
    assert_rel_close(m(x, ctx(x, False))[0], _softmax_reference(m, x), 1e-6)
    # right padding: landmarks over the real tokens only; still exact at m = #real
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, 7:] = False
    m.pinv_method, m.landmarks = "exact", 7
    y, _ = m(x, ctx(x, False, mask))
    assert_rel_close(y[1, :7], _softmax_reference(m, x[1:, :7])[0], 1e-8)


def test_matches_hugging_face_nystromformer():
    tr = pytest.importorskip("transformers")
    from transformers.models.nystromformer.modeling_nystromformer import \
        NystromformerSelfAttention
    n, d, h, m_ = 16, 16, 2, 4
    cfg = tr.NystromformerConfig(hidden_size=d, num_attention_heads=h, num_landmarks=m_,
                                 segment_means_seq_len=n, conv_kernel_size=3,
                                 inv_coeff_init_option=False, attention_probs_dropout_prob=0.0)
    hf = NystromformerSelfAttention(cfg).eval()
    hf.init_option = "per-matrix"         # HF's "original" init takes a max over the batch
    m = make_mixer("nystrom", False, heads=h, landmarks=m_, pinv_iters=6, conv_kernel=3)
    with torch.no_grad():
        m.conv.weight.copy_(hf.conv.weight)               # the depthwise-conv skip on V
        for ours, theirs in ((m.q_proj, hf.query), (m.k_proj, hf.key), (m.v_proj, hf.value)):
            ours.weight.copy_(theirs.weight)
            ours.bias.copy_(theirs.bias)
    x = torch.randn(3, n, d)
    ref = m.o_proj(hf(x)[0])
    assert_rel_close(m(x, ctx(x, False))[0], ref, 1e-5)


@pytest.mark.parametrize("method", ["razavi", "newton"])
def test_iterative_pseudo_inverse_converges(method):
    A = (torch.randn(3, 6, 6, dtype=torch.float64) + 2 * torch.eye(6)).softmax(-1)
    Z = pinv(A, method, 60)
    assert_rel_close(Z, torch.linalg.pinv(A), 1e-8)


def test_segment_means_skip_padding():
    x = torch.arange(12.0).view(1, 1, 6, 2)
    mask = torch.tensor([[False, True, True, True, True, False]])
    means, ok = segment_means(x, mask, 2)
    torch.testing.assert_close(means[0, 0], torch.stack([x[0, 0, 1:3].mean(0),
                                                          x[0, 0, 3:5].mean(0)]))
    assert ok.all()
    _, ok = segment_means(x, mask, 6)                  # more landmarks than real tokens
    assert ok.sum() == 4
