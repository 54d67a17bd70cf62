"""RFA: random Fourier features are unbiased for the Gaussian kernel; the gated causal layer
equals its recurrence; LARA's importance weights are unbiased and its estimate matches the
formula; all forms agree."""
import math

import pytest
import torch
import torch.nn.functional as F

from tevo.errors import ConfigError
from tiny import make_mixer
from papers.linear_reference import assert_rel_close, ctx, forms_agree, left_padded


def test_random_features_are_unbiased_in_expectation():
    """E_ω[φ(q)ᵀφ(k)] = exp(−σ²‖q − k‖²/2) for the mixer's own map: the mean over many
    independent redraws approaches the kernel, and the error shrinks ~ 1/√draws."""
    torch.manual_seed(0)
    m = make_mixer("rfa", True, nb_features=16)
    q = F.normalize(torch.randn(1, 1, 1, 8), dim=-1)
    k = F.normalize(torch.randn(1, 1, 1, 8), dim=-1)
    target = math.exp(-float((q - k).norm()) ** 2 / 2)
    ests = []
    for _ in range(4000):
        m.fmap.draw()
        ests.append((m.fmap(q) * m.fmap(k)).sum(-1)[0, 0, 0].item())   # head 0 (σ = 1)
    ests = torch.tensor(ests)
    assert abs(ests.mean().item() - target) < 4 * ests.std().item() / math.sqrt(len(ests))
    assert abs(ests[:100].mean() - target) > abs(ests.mean() - target) - 0.02


def test_gated_rfa_equals_its_recurrence():
    """Eq. 7 written out: S_t = g S + (1−g) φ(k)vᵀ, z_t likewise, y = φ(q)ᵀS / max(φ(q)ᵀz, c)
    with the authors' floor c = 10/m on the sign-indefinite estimate of the normaliser."""
    m = make_mixer("rfa", True, nb_features=16, chunk=4)
    assert m.min_denominator == 10 / 16
    x = torch.randn(2, 9, 16)
    y, _ = m(x, ctx(x, True))
    B, n, _ = x.shape
    h, e = m.heads, m.head_dim
    q = F.normalize(m.q_proj(x).view(B, n, h, e).transpose(1, 2), dim=-1)
    k = F.normalize(m.k_proj(x).view(B, n, h, e).transpose(1, 2), dim=-1)
    v = m.v_proj(x).view(B, n, h, e).transpose(1, 2)
    g = torch.sigmoid(m.gate_proj(x)).transpose(1, 2)            # (B, h, n)
    fq, fk = m.fmap(q), m.fmap(k)
    S = torch.zeros(B, h, fq.shape[-1], e)
    z = torch.zeros(B, h, fq.shape[-1])
    outs, dens = [], []
    for t in range(n):
        gt = g[..., t, None]
        S = gt[..., None] * S + (1 - gt)[..., None] * fk[..., t, :, None] * v[..., t, None, :]
        z = gt * z + (1 - gt) * fk[..., t, :]
        den = (fq[..., t, :] * z).sum(-1, keepdim=True)
        dens.append(den)
        outs.append((fq[..., t, None, :] @ S).squeeze(-2) / den.clamp_min(10 / 16))
    ref = m.o_proj(torch.stack(outs, 2).transpose(1, 2).reshape(B, n, h * e))
    assert_rel_close(y, ref, 1e-5)
    dens = torch.cat(dens)
    assert (dens < 10 / 16).any() and (dens > 10 / 16).any()       # both branches exercised


def test_rfa_forms_agree_with_padding():
    m = make_mixer("rfa", True, nb_features=16, chunk=4)
    x, mask = left_padded()
    forms_agree(m, ["recurrent", "parallel", "chunk", "scan"], x, mask)


def test_lara_importance_weights_are_unbiased():
    """The IS identity behind LARA: E_{ω~N(μ,I)}[ξ(q,ω)ξ(k,ω) N(ω;0,I)/N(ω;μ,I)] = exp(qᵀk),
    for any proposal mean μ."""
    torch.manual_seed(0)
    e = 4
    q, k, mu = torch.randn(e) * 0.4, torch.randn(e) * 0.4, torch.randn(e) * 0.5
    w = mu + torch.randn(400000, e)
    log_xi = lambda x: w @ x - 0.5 * x @ x                          # noqa: E731
    log_ratio = -0.5 * (w * w).sum(-1) + 0.5 * ((w - mu) ** 2).sum(-1)
    est = (log_xi(q) + log_xi(k) + log_ratio).exp().mean().item()
    assert abs(est / math.exp(float(q @ k)) - 1) < 0.02


def test_lara_matches_its_estimator_formula_and_ignores_padding():
    m = make_mixer("rfa", False, estimator="lara", landmarks=3)
    x = torch.randn(2, 9, 16)
    y, _ = m(x, ctx(x, False))
    B, n, _ = x.shape
    h, e = m.heads, m.head_dim
    q, k, v = (p(x).view(B, n, h, e).transpose(1, 2) for p in (m.q_proj, m.k_proj, m.v_proj))
    qs, ks = q * e ** -0.25, k * e ** -0.25
    seg = [list(range(0, 3)), list(range(3, 6)), list(range(6, 9))]
    qb = torch.stack([qs[..., s, :].mean(-2) for s in seg], -2)
    kb = torch.stack([ks[..., s, :].mean(-2) for s in seg], -2)
    mu = qb + kb
    lq = mu @ qs.transpose(-1, -2) - 0.5 * (qs * qs).sum(-1)[:, :, None]     # (B, h, C, n)
    lk = mu @ ks.transpose(-1, -2) - 0.5 * (ks * ks).sum(-1)[:, :, None]
    f = lk.softmax(-1) @ v                                                 # (B, h, C, e)
    lp = mu @ mu.transpose(-1, -2) - 0.5 * (mu * mu).sum(-1)[:, :, None, :]
    bh = lp.diagonal(dim1=-2, dim2=-1).exp() / lp.exp().sum(-1)
    r = (qs @ qb.transpose(-1, -2)).softmax(-1)
    alpha = bh[:, :, None, :] + r - r.mean(-1, keepdim=True)
    wts = alpha * (lq.transpose(-1, -2) + torch.logsumexp(lk, -1)[:, :, None, :]
                   - lp.diagonal(dim1=-2, dim2=-1)[:, :, None, :]).exp()
    out = (wts / wts.sum(-1, keepdim=True)) @ f
    ref = m.o_proj(out.transpose(1, 2).reshape(B, n, h * e))
    assert_rel_close(y, ref, 1e-4)
    # right padding changes nothing for real tokens
    xp = torch.cat([x, torch.randn(2, 3, 16) * 3], 1)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[:, 9:] = False
    yp, _ = m(xp, ctx(xp, False, mask))
    assert_rel_close(yp[:, :9], y, 1e-5)


def test_lara_refuses_causal_models():
    with pytest.raises(ConfigError, match="no causal form"):
        make_mixer("rfa", True, estimator="lara")
