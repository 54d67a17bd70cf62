"""The associative scan and the chunked kernels: every fast form equals its plain loop."""
import pytest
import torch

import tevo.nn.scan as scan_mod
from tevo.nn.chunked import (cumulative_softmax_average, delta_rule, fp32_region,
                             linear_attention, safe_denominator)
from tevo.nn.scan import linear_recurrence_loop, parallel_scan, scan_depth
from tevo.registry import TOOLS
from papers.linear_reference import ShapeRecorder, assert_rel_close

TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 7, 16, 33])
def test_parallel_scan_equals_sequential_loop(n):
    a = torch.rand(3, n, 5, requires_grad=True)
    b = torch.randn(3, n, 5, requires_grad=True)
    h0 = torch.randn(3, 5)
    fast, slow = parallel_scan(a, b, h0), linear_recurrence_loop(a, b, h0)
    torch.testing.assert_close(fast, slow, **TOL)
    w = torch.randn_like(fast)
    ga = torch.autograd.grad((fast * w).sum(), (a, b))
    gb = torch.autograd.grad((slow * w).sum(), (a, b))
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, **TOL)
    assert TOOLS.get("parallel_scan").obj is parallel_scan


def test_parallel_scan_broadcast_decay_other_dim_and_complex():
    a = torch.rand(2, 1, 9, 1)                       # scalar decay per step, scan along dim 2
    b = torch.randn(2, 4, 9, 3)
    torch.testing.assert_close(parallel_scan(a, b, dim=2), linear_recurrence_loop(a, b, dim=2),
                               **TOL)
    ac = torch.polar(torch.rand(2, 11, 4), torch.randn(2, 11, 4))   # LRU-style complex decays
    bc = torch.randn(2, 11, 4, dtype=torch.cfloat)
    torch.testing.assert_close(parallel_scan(ac, bc), linear_recurrence_loop(ac, bc), **TOL)


@pytest.mark.parametrize("n", [2, 64, 100, 1000])
def test_parallel_scan_depth_is_log_n(n, monkeypatch):
    """O(log n) depth: the number of combine rounds is ceil(log2 n), not n."""
    rounds = []
    orig = scan_mod._combine

    def counting(*args):
        rounds.append(1)
        return orig(*args)
    monkeypatch.setattr(scan_mod, "_combine", counting)
    parallel_scan(torch.rand(1, n, 2), torch.randn(1, n, 2))
    assert len(rounds) == scan_depth(n) == (n - 1).bit_length()


@pytest.mark.parametrize("n", [255, 256, 1000])
def test_parallel_scan_work_is_linear_and_long_scans_match_the_loop(n, monkeypatch):
    """O(n) work: the pairs combined over all levels sum to < n (Hillis–Steele rounds combine
    ~n log n); and long, odd lengths still equal the loop (values and gradients)."""
    combined = []
    orig = scan_mod._combine

    def counting(a_prev, b_prev, a, b):
        combined.append(b.shape[1])
        return orig(a_prev, b_prev, a, b)
    monkeypatch.setattr(scan_mod, "_combine", counting)
    a = (0.5 + 0.5 * torch.rand(2, n, 3)).requires_grad_(True)
    b = torch.randn(2, n, 3, requires_grad=True)
    h0 = torch.randn(2, 3)
    fast = parallel_scan(a, b, h0)
    assert sum(combined) < n + scan_depth(n)
    slow = linear_recurrence_loop(a, b, h0)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)
    w = torch.randn_like(fast)
    g1 = torch.autograd.grad((fast * w).sum(), (a, b))
    g2 = torch.autograd.grad((slow * w).sum(), (a, b))
    for x, y in zip(g1, g2):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def test_parallel_scan_gradients_complex_and_broadcast_match_the_loop():
    """The hand-written backward (a reverse scan with conjugated decays) == autograd through
    the loop: complex a, b, h0 (LRU) and a real decay broadcast over complex values."""
    n = 13
    a = torch.polar(torch.rand(2, n, 4), torch.randn(2, n, 4)).requires_grad_(True)
    b = torch.randn(2, n, 4, dtype=torch.cfloat, requires_grad=True)
    h0 = torch.randn(2, 4, dtype=torch.cfloat, requires_grad=True)
    ar = torch.rand(2, n, 1, requires_grad=True)
    w = torch.randn(2, n, 4, dtype=torch.cfloat)
    for args in ((a, b, h0), (ar, b, None)):
        leaves = tuple(t for t in args if t is not None)
        g1 = torch.autograd.grad((parallel_scan(*args) * w).real.sum(), leaves)
        g2 = torch.autograd.grad((linear_recurrence_loop(*args) * w).real.sum(), leaves)
        for x, y in zip(g1, g2):
            assert x.shape == y.shape and x.dtype == y.dtype
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("decay", [False, True])
def test_linear_attention_kernel_forms_agree(decay):
    B, h, n, dk, dv = 2, 2, 13, 4, 5
    q, k, v = torch.randn(B, h, n, dk), torch.randn(B, h, n, dk), torch.randn(B, h, n, dv)
    g = -torch.rand(B, h, n) if decay else None
    S0 = torch.randn(B, h, dk, dv)
    ins = [t.requires_grad_(True) for t in (q, k, v)]
    ref = None
    for form in ("recurrent", "parallel", "chunk", "scan"):
        o, S = linear_attention(*ins, form=form, chunk=4, log_decay=g, state=S0)
        grads = torch.autograd.grad((o * o.detach().sin()).sum() + S.sum(), ins)
        if ref is None:
            ref = (o, S, grads)
            continue
        assert_rel_close(o, ref[0], what=form)
        assert_rel_close(S, ref[1], what=form)
        for a, b in zip(grads, ref[2]):
            assert_rel_close(a, b, what=form)


def test_linear_attention_bidirectional_equals_quadratic_form():
    q, k, v = torch.randn(2, 2, 9, 4), torch.randn(2, 2, 9, 4), torch.randn(2, 2, 9, 3)
    o1, _ = linear_attention(q, k, v, causal=False, form="parallel")
    o2, _ = linear_attention(q, k, v, causal=False, form="chunk")
    torch.testing.assert_close(o1, o2, **TOL)
    torch.testing.assert_close(o1, torch.einsum("bhie,bhje,bhjd->bhid", q, k, v), **TOL)


def test_chunk_form_never_materialises_an_n_by_n_matrix():
    n, C = 64, 8
    q, k, v = torch.randn(1, 2, n, 4), torch.randn(1, 2, n, 4), torch.randn(1, 2, n, 4)
    for form, expect_nn in (("parallel", True), ("chunk", False)):
        with ShapeRecorder() as rec:
            linear_attention(q, k, v, form=form, chunk=C)
        has_nn = any(len(s) >= 2 and s[-1] >= n and s[-2] >= n for s in rec.shapes)
        assert has_nn == expect_nn, form
    with ShapeRecorder() as rec:
        linear_attention(q, k, v, form="chunk", chunk=C)
    biggest = max(torch.Size(s).numel() for s in rec.shapes)
    # O(n d + n C): the output and the within-chunk scores of all chunks at once, never h n²
    assert biggest <= max(2 * n * 4 + 1, 2 * n * C), biggest


def test_recurrent_state_does_not_grow_with_n():
    for n in (4, 40):
        q = k = v = torch.randn(1, 2, n, 3)
        _, S = linear_attention(q, k, v, form="recurrent")
        assert S.shape == (1, 2, 3, 3)


def test_delta_rule_forms_agree():
    B, h, n, dk, dv = 2, 2, 11, 4, 3
    q = torch.randn(B, h, n, dk, requires_grad=True)
    k = torch.nn.functional.normalize(torch.randn(B, h, n, dk), dim=-1).requires_grad_(True)
    v = torch.randn(B, h, n, dv, requires_grad=True)
    beta = torch.rand(B, h, n, requires_grad=True)
    S0 = torch.randn(B, h, dk, dv)
    ref = None
    for form in ("recurrent", "parallel", "chunk"):
        o, S = delta_rule(q, k, v, beta, form=form, chunk=4, state=S0)
        grads = torch.autograd.grad((o * o.detach().cos()).sum() + S.sum(), (q, k, v, beta))
        if ref is None:
            ref = (o, S, grads)
            continue
        assert_rel_close(o, ref[0], what=form)
        assert_rel_close(S, ref[1], what=form)
        for a, b in zip(grads, ref[2]):
            assert_rel_close(a, b, what=form)


def test_delta_rule_overwrites_the_value_of_a_repeated_key():
    """β = 1 and a unit key: writing (k, v₂) after (k, v₁) makes S recall exactly v₂."""
    k = torch.nn.functional.normalize(torch.randn(1, 1, 1, 4), dim=-1).expand(1, 1, 2, 4)
    v = torch.randn(1, 1, 2, 3)
    o, S = delta_rule(k, k, v, torch.ones(1, 1, 2), form="recurrent")
    torch.testing.assert_close(o[..., 1, :], v[..., 1, :], **TOL)


def test_cumulative_softmax_forms_agree_with_padding_and_state():
    l, v = torch.randn(2, 9, 4) * 5, torch.randn(2, 9, 4)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, :3] = False
    st = {"L": torch.randn(2, 4), "y": torch.randn(2, 4)}
    ref = cumulative_softmax_average(l, v, mask=mask, form="recurrent", state=st)
    for form in ("parallel", "scan"):
        got = cumulative_softmax_average(l, v, mask=mask, form=form, state=st)
        for a, b in zip(got[:2], ref[:2]):
            torch.testing.assert_close(a, b, **TOL)
    # equals the explicit softmax over the prefix (no state)
    y, _, _ = cumulative_softmax_average(l, v, form="scan")
    for t in range(9):
        w = l[:, :t + 1].softmax(1)
        torch.testing.assert_close(y[:, t], (w * v[:, :t + 1]).sum(1), **TOL)
    # huge logits stay finite (log-space normaliser)
    y, _, _ = cumulative_softmax_average(l * 1e3, v, form="scan")
    assert torch.isfinite(y).all()


def test_safe_denominator_and_fp32_region():
    d = torch.tensor([0.0, 1e-9, -1e-9, 2.0, -3.0])
    out = safe_denominator(d, 1e-6)
    assert (out.abs() >= 1e-6).all() and out[3] == 2.0 and out[4] == -3.0 and out[2] < 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = torch.randn(4, 4)
        assert (a @ a).dtype == torch.bfloat16
        with fp32_region("cpu"):
            assert (a @ a).dtype == torch.float32
