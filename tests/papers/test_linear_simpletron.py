"""SimpleTRON: Q(KᵀV)/(√d n) equals the softmax-free quadratic attention (QKᵀ/√d ⊙ M)V/n
exactly (no approximation); forms agree with padding."""
import pytest

from tiny import make_mixer
from papers.linear_reference import assert_rel_close, ctx, forms_agree, left_padded


@pytest.mark.parametrize("causal", [True, False])
def test_simpletron_equals_softmax_free_attention(causal):
    m = make_mixer("simpletron", causal, chunk=4)
    x, mask = left_padded(n=10)
    if not causal:
        mask = mask.flip(1)
    y, _ = m(x, ctx(x, causal, mask))
    B, n, _ = x.shape
    h, e = m.heads, m.head_dim
    q, k, v = (p(x).view(B, n, h, e).transpose(1, 2) for p in (m.q_proj, m.k_proj, m.v_proj))
    A = (q @ k.transpose(-1, -2)) / e ** 0.5 * mask[:, None, None, :]
    if causal:
        A = A.tril()
    cnt = (A != 0).sum(-1, keepdim=True).clamp_min(1)         # real keys seen
    ref = m.o_proj(((A @ v) / cnt).transpose(1, 2).reshape(B, n, h * e))
    assert_rel_close(y[mask], ref[mask], 1e-5)


def test_simpletron_forms_agree():
    m = make_mixer("simpletron", True, chunk=4)
    x, mask = left_padded()
    forms_agree(m, ["recurrent", "parallel", "chunk", "scan"], x, mask)
