"""Collaborative attention: a trained multi-head layer (with biases), reparametrised at full
rank (D̃ = h·e: concatenated projections, block-indicator mixing, content bias r_i = W_K^i b_Q^i),
is reproduced exactly; the forward equals eq. 6–7 written head by head."""
import torch

from papers.attention_reference import ctx, prefill_then_steps
from tevo.mixers.attention.collab import CollaborativeAttention
from tiny import make_mixer

D, H = 16, 4


def _trained_mha(causal):
    mha = make_mixer("softmax", causal, d=D, heads=H, impl="eager").train()
    opt = torch.optim.Adam(mha.parameters(), 1e-2)
    target = torch.nn.Linear(D, D)
    for _ in range(20):                                       # a few steps of a regression task
        x = torch.randn(4, 8, D)
        loss = (mha(x, ctx(x, causal))[0] - target(x).detach()).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():                                     # make the biases clearly non-zero
        mha.q_proj.bias.normal_()
        mha.k_proj.bias.normal_()
    return mha.eval()


def test_reparametrised_trained_mha_is_reproduced_at_full_rank():
    for causal in (True, False):
        mha = _trained_mha(causal)
        col = CollaborativeAttention.from_attention(mha).eval()
        assert col.shared_dim == H * (D // H)
        x = torch.randn(3, 11, D)
        mask = torch.ones(3, 11, dtype=torch.bool)
        mask[1, :4] = False
        y, _ = col(x, ctx(x, causal, mask))
        r, _ = mha(x, ctx(x, causal, mask))
        torch.testing.assert_close(y[mask], r[mask], atol=1e-5, rtol=1e-4)
        # without the content bias the query bias is lost: the reproduction then fails
        col.content_bias.weight.data.zero_()
        assert not torch.allclose(col(x, ctx(x, causal, mask))[0][mask], r[mask], atol=1e-3)


def test_forward_equals_eq_6_7_head_by_head():
    m = make_mixer("collab", True, d=D, heads=H, shared_dim=6, mixing_init="normal")
    x = torch.randn(2, 9, D)
    y, _ = m(x, ctx(x, True))
    q, k = m.q_proj(x), m.k_proj(x)
    v = m.v_proj(x).view(2, 9, H, -1)
    causal = torch.ones(9, 9, dtype=torch.bool).tril()
    heads = []
    for i in range(H):
        s = (q * m.mixing[i]) @ k.transpose(-1, -2) + m.content_bias(x)[..., i].unsqueeze(1)
        a = (s / (6 / H) ** 0.5).masked_fill(~causal, float("-inf")).softmax(-1)
        heads.append(a @ v[:, :, i])
    torch.testing.assert_close(y, m.o_proj(torch.cat(heads, -1)), atol=1e-5, rtol=1e-4)
    assert m.q_proj.weight.shape == (6, D)                    # shared, not per head


def test_cache_equals_full_pass():
    m = make_mixer("collab", True, d=D, heads=H, shared_dim=8)
    x = torch.randn(2, 10, D)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, :3] = False
    inc, full, st = prefill_then_steps(m, x, mask, 4, chunk=3)
    torch.testing.assert_close(inc[mask], full[mask], atol=1e-5, rtol=1e-4)
    assert st["k"].shape == (2, 10, 8)                        # one shared key per token
