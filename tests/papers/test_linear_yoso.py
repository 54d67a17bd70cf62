"""YOSO: the collision probability of sampled τ-bit hyperplane hashes matches the angular kernel
(1 − θ/π)^τ; the expectation path equals Hugging Face's YosoSelfAttention; the sampled
(LSH bucket) estimate converges to the expectation as hashes grow; chunked causal sampling
equals its quadratic collision form and decodes from the bucket table."""
import math

import pytest
import torch

from tevo.mixers.linear.yoso import collision_probability, hash_codes
from tiny import make_mixer
from papers.linear_reference import assert_rel_close, ctx, left_padded, prefill_then_steps


def test_collision_probability_matches_angular_kernel():
    torch.manual_seed(0)
    e, tau, m = 8, 4, 40000
    planes = torch.randn(m, tau, e)
    a = torch.nn.functional.normalize(torch.randn(e), dim=0)
    u = torch.nn.functional.normalize(torch.randn(e) - (torch.randn(e) @ a) * a, dim=0)
    u = torch.nn.functional.normalize(u - (u @ a) * a, dim=0)
    for theta in (0.2, 0.8, 1.6, 2.6):
        b = math.cos(theta) * a + math.sin(theta) * u
        freq = (hash_codes(a[None], planes) == hash_codes(b[None], planes)).float().mean()
        expect = (1 - theta / math.pi) ** tau
        assert abs(freq.item() - expect) < 0.01
        torch.testing.assert_close(collision_probability(a @ b, tau), torch.tensor(expect),
                                   atol=1e-4, rtol=0)


def test_expectation_matches_hugging_face_yoso():
    tr = pytest.importorskip("transformers")
    from transformers.models.yoso.modeling_yoso import YosoSelfAttention
    cfg = tr.YosoConfig(hidden_size=16, num_attention_heads=2, hash_code_len=5,
                        use_expectation=True, conv_window=None, attention_probs_dropout_prob=0.0)
    hf = YosoSelfAttention(cfg).eval()
    m = make_mixer("yoso", False, heads=2, hash_bits=5, mode="expectation")
    with torch.no_grad():
        for ours, theirs in ((m.q_proj, hf.query), (m.k_proj, hf.key), (m.v_proj, hf.value)):
            ours.weight.copy_(theirs.weight)
            ours.bias.copy_(theirs.bias)
    x = torch.randn(2, 12, 16)
    ref = m.o_proj(hf(x, torch.zeros(2, 12))[0])          # additive-mask convention: 0 = keep
    assert_rel_close(m(x, ctx(x, False))[0], ref, 1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_sampled_estimate_converges_to_expectation(causal):
    torch.manual_seed(0)
    x = torch.randn(2, 12, 16)
    exp_m = make_mixer("yoso", causal, hash_bits=3, mode="expectation")
    ref, _ = exp_m(x, ctx(x, causal))
    errs = []
    for hashes in (2, 32, 2048):
        s = make_mixer("yoso", causal, hash_bits=3, n_hashes=hashes, mode="sample")
        s.load_state_dict({k: v for k, v in exp_m.state_dict().items() if k != "planes"},
                          strict=False)
        y, _ = s(x, ctx(x, causal))
        errs.append(((y - ref).norm() / ref.norm()).item())
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.05, errs


def test_causal_sampling_chunks_and_decoding_agree():
    m = make_mixer("yoso", True, hash_bits=3, n_hashes=8, chunk=4)
    x, mask = left_padded(n=13)
    y_chunk, _ = m(x, ctx(x, True, mask))
    m.chunk = 64                                           # one chunk: quadratic collisions
    y_quad, _ = m(x, ctx(x, True, mask))
    assert_rel_close(y_chunk[mask], y_quad[mask], 1e-6)
    m.chunk = 4
    y_inc, y_full, st = prefill_then_steps(m, x, mask)
    assert_rel_close(y_inc[mask], y_full[mask], 1e-5)
    assert st["table"].shape == (2, m.heads, 8, 8, m.head_dim)     # O(m 2^τ d), not O(n)
