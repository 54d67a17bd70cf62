"""Feature maps of kernel attention: formulas, and the random maps' expectations."""
import math

import torch
import torch.nn.functional as F

from tevo.mixers.linear.feature_maps import build_feature_map, gaussian_orthogonal_matrix
from tevo.registry import FEATURE_MAPS


def test_elementwise_maps_match_formulas():
    x = torch.randn(2, 3, 5, 8)
    expect = {"elu+1": F.elu(x) + 1, "relu": x.clamp_min(0), "exp": x.exp(),
              "softmax": x.exp() / x.exp().sum(-1, keepdim=True), "identity": x,
              "sigmoid": 1 / (1 + (-x).exp())}
    for name, ref in expect.items():
        fm = build_feature_map(name, 8)
        torch.testing.assert_close(fm(x), ref)
        assert fm.out_dim == 8
        if fm.positive:
            assert (fm(x * 50) >= 0).all()
    assert set(expect) < set(FEATURE_MAPS.names())


def test_dpfp_matches_the_papers_definition():
    """Schlag et al. eq. 33: φ_{r,i}(x) = x'_i · x'_{i−r mod 2e}, x' = [relu(x), relu(−x)]."""
    e, nu = 3, 2
    fm = build_feature_map({"name": "dpfp", "nu": nu}, e)
    x = torch.randn(4, e)
    out = fm(x)
    assert out.shape == (4, 2 * e * nu) and fm.out_dim == 2 * e * nu
    for b in range(4):
        xp = [max(float(v), 0.0) for v in x[b]] + [max(-float(v), 0.0) for v in x[b]]
        ref = [xp[i] * xp[(i - r) % (2 * e)] for r in range(1, nu + 1) for i in range(2 * e)]
        torch.testing.assert_close(out[b], torch.tensor(ref))


def test_cosformer_reweighting_is_cos_distance():
    """φ(q_i)ᵀφ(k_j) = relu(q_i)ᵀrelu(k_j) · cos(π/2 · (i − j)/M) (cosFormer eq. 9–11)."""
    M = 16
    fm = build_feature_map("cosformer", 4, max_len=M)
    q, k = torch.randn(1, 1, 10, 4), torch.randn(1, 1, 10, 4)
    pos = torch.arange(10).unsqueeze(0)
    got = fm(q, pos) @ fm(k, pos).transpose(-1, -2)
    i = torch.arange(10)
    w = torch.cos(math.pi / 2 * (i[:, None] - i[None, :]) / M)
    ref = (q.relu() @ k.relu().transpose(-1, -2)) * w
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def _kernel_mc(name, x, y, **kw):
    fm = build_feature_map({"name": name, **kw}, x.shape[-1])
    return (fm(x.view(1, 1, 1, -1)) * fm(y.view(1, 1, 1, -1))).sum().item(), fm


def test_favor_is_unbiased_for_the_softmax_kernel():
    """E[φ(q)ᵀφ(k)] = exp(qᵀk/√e), and the error shrinks as the number of features grows."""
    torch.manual_seed(0)
    e = 8
    x, y = torch.randn(e) * 0.7, torch.randn(e) * 0.7
    target = math.exp(float(x @ y) / math.sqrt(e))
    got, fm = _kernel_mc("favor+", x, y, nb_features=40000, ortho=False, stabilize=False)
    assert abs(got / target - 1) < 0.03
    errs = []
    for m in (4, 64, 1024):
        vals = [_kernel_mc("favor+", x, y, nb_features=m, stabilize=False)[0] for _ in range(40)]
        errs.append(sum((v - target) ** 2 for v in vals) / len(vals))
    assert errs[0] > errs[1] > errs[2]
    # orthogonal rows within a block, Gaussian norms
    w = gaussian_orthogonal_matrix(8, 8)
    wn = F.normalize(w, dim=-1)
    torch.testing.assert_close(wn @ wn.T, torch.eye(8), atol=1e-5, rtol=0)


def test_favor_redraws_only_in_training():
    fm = build_feature_map({"name": "favor+", "nb_features": 8, "redraw_every": 1}, 4)
    w0 = fm.omega.clone()
    fm.eval()
    for _ in range(3):
        fm.maybe_redraw()
    assert torch.equal(fm.omega, w0)
    fm.train()
    fm.maybe_redraw()                                   # call 0: no redraw yet
    fm.maybe_redraw()
    assert not torch.equal(fm.omega, w0)


def test_trig_is_unbiased_for_the_gaussian_kernel():
    """RFA: E[φ(x)ᵀφ(y)] = exp(−σ²‖x − y‖²/2) with ω ~ N(0, σ²I)."""
    torch.manual_seed(0)
    e, sigma = 6, 0.8
    x, y = torch.randn(e) * 0.5, torch.randn(e) * 0.5
    target = math.exp(-sigma ** 2 * float((x - y).norm()) ** 2 / 2)
    got, _ = _kernel_mc("trig", x, y, nb_features=40000, sigma=sigma)
    assert abs(got - target) < 0.02


def test_gmm_prf_matches_its_closed_form_kernel():
    """Monte Carlo over the learned spectral mixture equals the closed form; at init (μ = 0,
    σ = 1) the kernel is the softmax kernel exp(qᵀk/√e)."""
    torch.manual_seed(0)
    e = 4
    fm = build_feature_map({"name": "gmm_prf", "components": 2, "nb_features": 60000,
                            "stabilize": False}, e)
    x, y = torch.randn(e) * 0.6, torch.randn(e) * 0.6
    xs, ys = x * e ** -0.25, y * e ** -0.25
    mc = (fm(x.view(1, 1, 1, -1)) * fm(y.view(1, 1, 1, -1))).sum().item()
    assert abs(mc / math.exp(float(xs @ ys)) - 1) < 0.03
    with torch.no_grad():
        fm.mu.normal_(0, 0.3)
        fm.log_sigma.uniform_(-0.4, 0.2)
        fm.mix_logits.normal_()
    pi = fm.mix_logits[0].softmax(-1)
    closed = 0.0
    for c in range(2):
        mu, s2 = fm.mu[0, c], fm.log_sigma[0, c].exp() ** 2
        z = xs + ys
        closed += pi[c] * torch.exp(mu @ z + 0.5 * (s2 * z * z).sum() - 0.5 * xs @ xs
                                    - 0.5 * ys @ ys)
    mc = (fm(x.view(1, 1, 1, -1)) * fm(y.view(1, 1, 1, -1))).sum().item()
    assert abs(mc / closed.item() - 1) < 0.05
