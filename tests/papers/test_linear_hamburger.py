"""Hamburger: NMF multiplicative updates never increase ‖Z − DCᵀ‖ (Lee & Seung) and recover an
exactly low-rank non-negative matrix; soft VQ codes are distributions and bases their weighted
means; the burger equals bread ∘ ham ∘ bread; the one-step gradient reaches both breads."""
import torch
import torch.nn.functional as F

from tevo.mixers.linear.hamburger import nmf_step, vq_step
from tiny import make_mixer
from papers.linear_reference import assert_rel_close, ctx


def test_nmf_updates_decrease_reconstruction_error():
    torch.manual_seed(0)
    D0, C0 = torch.rand(1, 12, 3), torch.rand(1, 20, 3)
    Z = D0 @ C0.transpose(1, 2)                              # exactly rank 3, non-negative
    D, C = torch.rand(1, 12, 3), torch.rand(1, 20, 3)
    errs = []
    for _ in range(300):
        D, C = nmf_step(Z, D, C)
        errs.append((Z - D @ C.transpose(1, 2)).norm().item())
    assert all(b <= a + 1e-5 for a, b in zip(errs, errs[1:]))
    assert errs[-1] < 0.02 * Z.norm().item()


def test_vq_codes_are_distributions_and_bases_are_means():
    Z, D = torch.randn(2, 8, 10), torch.randn(2, 8, 3)
    D2, C = vq_step(Z, D, 0.5, None)
    torch.testing.assert_close(C.sum(-1), torch.ones(2, 10))
    torch.testing.assert_close(D2, Z @ C / (C.sum(1, keepdim=True) + 1e-6))


def test_burger_equals_bread_ham_bread_and_one_step_gradient():
    m = make_mixer("hamburger", False, rank=3, steps=4).train()
    x = torch.randn(2, 9, 16)
    y, _ = m(x, ctx(x, False))
    Z = F.relu(m.lower(x)).transpose(1, 2)
    D = m.bases.unsqueeze(0).expand(2, -1, -1)
    C = (Z.transpose(1, 2) @ D).softmax(-1)
    for _ in range(4):
        D, C = nmf_step(Z, D, C)
    C = C * (Z.transpose(1, 2) @ D) / (C @ (D.transpose(1, 2) @ D) + 1e-6)
    assert_rel_close(y, m.upper((D @ C.transpose(1, 2)).transpose(1, 2)), 1e-5)
    y.pow(2).sum().backward()
    assert m.lower.weight.grad.abs().sum() > 0 and m.upper.weight.grad.abs().sum() > 0
    v = make_mixer("hamburger", False, rank=3, steps=2, method="vq")
    assert torch.isfinite(v(x, ctx(x, False))[0]).all()
