"""KERPLE: both kernels equal the reference formulas, their learned parameters stay in the valid
ranges whatever the raw values, and the bias matrices are conditionally positive definite."""
import pytest
import torch

from tevo.errors import ConfigError
from tevo.positions.kerple import EPS, KerplePosition


def _reference(kernel, r1, r2, n):
    """chijames/KERPLE ParallelKerple{Power,Log}.forward, on the causal (lower) triangle."""
    diff = torch.tril(torch.arange(n).view(n, 1).repeat(1, n) + torch.arange(0, -n, -1)).float()
    if kernel == "power":
        return -r1[:, None, None] * diff.pow(r2[:, None, None])
    return -r1[:, None, None] * torch.log(1 + r2[:, None, None] * diff)


def _cpd_min_eig(bias):
    """Smallest eigenvalue of the kernel matrix restricted to zero-sum vectors."""
    n = bias.shape[-1]
    p = torch.eye(n, dtype=torch.float64) - 1.0 / n
    return torch.linalg.eigvalsh(p @ bias.double() @ p)[..., 1:].min()   # drop the 1-direction


@pytest.mark.parametrize("kernel", ["power", "log"])
def test_kerple_kernels_formula_ranges_and_cpd(kernel):
    pe = KerplePosition(heads=3, kernel=kernel)
    n = 24
    pos = torch.arange(n).unsqueeze(0)
    b = pe.bias(torch.zeros(1, 3, n, 4), None, pos, pos)[0]               # (h, n, n)
    r1, r2 = pe.params()
    lower = torch.ones(n, n).tril().bool()
    torch.testing.assert_close(b[:, lower], _reference(kernel, r1, r2, n)[:, lower])
    torch.testing.assert_close(b, b.transpose(-1, -2))                    # depends on |m - n|
    assert _cpd_min_eig(b) > -1e-8
    # the raw parameters can go anywhere: the kernel parameters stay valid and finite
    with torch.no_grad():
        pe.rho1.copy_(torch.tensor([-1e3, 0.0, 1e3]))
        pe.rho2.copy_(torch.tensor([1e3, -1e3, 0.0]))
    r1, r2 = pe.params()
    assert (r1 >= EPS).all() and (r2 >= EPS).all()
    if kernel == "power":
        assert (r2 <= 2).all()
    b = pe.bias(torch.zeros(1, 3, n, 4), None, pos, pos)
    assert torch.isfinite(b).all()
    b.sum().backward()
    assert torch.isfinite(pe.rho1.grad).all() and torch.isfinite(pe.rho2.grad).all()


def test_cpd_check_can_fail_outside_the_valid_range():
    """-|m-n|^p is CPD only for p ≤ 2: the check above rejects p = 3."""
    d = torch.arange(24).float()
    dist = (d[:, None] - d[None, :]).abs()
    assert _cpd_min_eig(-dist.pow(2.0)) > -1e-8
    assert _cpd_min_eig(-dist.pow(3.0)) < -1e-3


def test_kerple_rejects_unknown_kernel():
    with pytest.raises(ConfigError, match="power"):
        KerplePosition(kernel="gaussian")
