"""Learned kernel (GMM-PRF): the attention converges to normalised attention under the learned
closed-form kernel; gradients reach the spectral parameters; forms agree."""
import torch

from tiny import make_mixer
from papers.linear_reference import assert_rel_close, ctx, forms_agree, left_padded


def _closed_form_attention(m, x, causal):
    B, n, _ = x.shape
    h, e = m.heads, m.head_dim
    q, k, v = (p(x).view(B, n, h, e).transpose(1, 2) for p in (m.q_proj, m.k_proj, m.v_proj))
    qs, ks = q * e ** -0.25, k * e ** -0.25
    f = m.fmap
    pi = f.mix_logits.softmax(-1)                                    # (h, C)
    K = 0
    for c in range(f.c):
        mu, s2 = f.mu[:, c], f.log_sigma[:, c].exp() ** 2           # (h, e)
        z = qs[:, :, :, None] + ks[:, :, None, :]                   # (B, h, n, n, e)
        K = K + pi[:, c, None, None] * torch.exp(
            (z * mu[:, None, None]).sum(-1) + 0.5 * (z * z * s2[:, None, None]).sum(-1)
            - 0.5 * (qs * qs).sum(-1)[..., :, None] - 0.5 * (ks * ks).sum(-1)[..., None, :])
    if causal:
        K = K.tril()
    y = (K @ v) / K.sum(-1, keepdim=True)
    return m.o_proj(y.transpose(1, 2).reshape(B, n, h * e))


def test_attention_uses_the_learned_closed_form_kernel():
    torch.manual_seed(0)
    m = make_mixer("learned_kernel", True, components=2, nb_features=20000)
    with torch.no_grad():
        m.fmap.mu.normal_(0, 0.2)
        m.fmap.log_sigma.uniform_(-0.3, 0.1)
        m.fmap.mix_logits.normal_()
    x = torch.randn(2, 8, 16) * 0.5
    for causal in (True, False):
        y, _ = m(x, ctx(x, causal))
        assert_rel_close(y, _closed_form_attention(m, x, causal).detach(), 0.03)


def test_spectral_parameters_learn_and_forms_agree():
    m = make_mixer("learned_kernel", True, chunk=4, components=2).train()
    x, mask = left_padded()
    y, _ = m(x, ctx(x, True, mask))
    y[mask].pow(2).sum().backward()
    for p in (m.fmap.mu, m.fmap.log_sigma, m.fmap.mix_logits):
        assert p.grad is not None and p.grad.abs().sum() > 0
    m.eval()
    forms_agree(m, ["recurrent", "parallel", "chunk", "scan"], x, mask)
