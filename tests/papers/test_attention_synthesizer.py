"""Synthesizer: the random variant ignores token content (its weights are fixed, so the layer is
affine in x, while dot-product and dense variants are not); every variant equals §3's equations
written token by token; positions index the tables (padding skipped); decode == full pass."""
import pytest
import torch

from papers.attention_reference import ctx, prefill_then_steps
from tiny import make_mixer

D, H, L = 16, 2, 24


def _affine_gap(m, causal):
    x1, x2 = torch.randn(2, 9, D), torch.randn(2, 9, D)
    f = lambda x: m(x, ctx(x, causal))[0]                     # noqa: E731
    a = 0.3
    return (f(a * x1 + (1 - a) * x2) - (a * f(x1) + (1 - a) * f(x2))).abs().max()


def test_random_synthesizer_ignores_token_content():
    for causal in (True, False):
        for fixed in (False, True):
            m = make_mixer("synthesizer", causal, d=D, heads=H, synth="random", max_len=L,
                           fixed_random=fixed)
            assert _affine_gap(m, causal) < 1e-5              # weights independent of x
            x = torch.randn(2, 9, D)
            y, _ = m(x, ctx(x, causal))
            R = m.random[:, :9, :9]
            if causal:
                R = R.masked_fill(~torch.ones(9, 9, dtype=torch.bool).tril(), float("-inf"))
            v = m.v_proj(x).view(2, 9, H, -1).transpose(1, 2)
            ref = m.o_proj((R.softmax(-1) @ v).transpose(1, 2).reshape(2, 9, D))
            torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-4)
        assert ("random" in dict(m.named_buffers())) and not any(
            "random" in n for n, _ in m.named_parameters())  # fixed: not trained
    for synth in ("dense", "dot", "random+dot"):             # content-dependent variants
        assert _affine_gap(make_mixer("synthesizer", True, d=D, heads=H, synth=synth,
                                      max_len=L), True) > 1e-3


def _token_by_token(m, x, causal):
    """Scores from §3's formulas one (i, j) at a time, mixed with α, then softmax."""
    B, n, _ = x.shape
    e = D // H
    alpha = m.alpha.softmax(0) if m.alpha is not None else torch.ones(1)
    v = m.v_proj(x).view(B, n, H, e)
    out = torch.zeros(B, n, H, e)
    for b in range(B):
        for h in range(H):
            for i in range(n):
                S = torch.zeros(n)
                for j in range(n):
                    for w, part in zip(alpha, m.parts):
                        if part == "dense":
                            Bi = m.dense2(torch.relu(m.dense1(x[b, i]))).view(H, L)
                            s = Bi[h, j]
                        elif part == "random":
                            s = m.random[h, i, j]
                        elif part == "factorized_dense":
                            A = m.f_a(x[b, i]).view(H, m.a)
                            Bf = m.f_b(x[b, i]).view(H, m.b)
                            s = A[h, j % m.a] * Bf[h, j // m.a]
                        elif part == "factorized_random":
                            s = m.r1[h, i] @ m.r2[h, j]
                        else:
                            q = m.q_proj(x[b, i]).view(H, e)[h]
                            k = m.k_proj(x[b, j]).view(H, e)[h]
                            s = q @ k / e ** 0.5
                        S[j] += w * s
                if causal:
                    S[i + 1:] = float("-inf")
                out[b, i, h] = S.softmax(0) @ v[b, :, h]
    return m.o_proj(out.reshape(B, n, D))


@pytest.mark.parametrize("synth", ["dense", "factorized_dense", "factorized_random",
                                   "dense+random+dot", "factorized_dense+factorized_random"])
def test_every_variant_equals_the_equations(synth):
    for causal in (True, False):
        m = make_mixer("synthesizer", causal, d=D, heads=H, synth=synth, max_len=L, factor=5,
                       rank=3)
        if m.alpha is not None:
            with torch.no_grad():
                m.alpha.normal_()
        x = torch.randn(2, 6, D)
        with torch.no_grad():
            torch.testing.assert_close(m(x, ctx(x, causal))[0], _token_by_token(m, x, causal),
                                       atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("synth", ["dense", "random", "factorized_dense", "factorized_random", "dot"])
def test_decode_equals_full_pass_with_left_padding(synth):
    m = make_mixer("synthesizer", True, d=D, heads=H, synth=synth, max_len=L)
    x = torch.randn(2, 12, D)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, :5] = False
    inc, full, _ = prefill_then_steps(m, x, mask, 4, chunk=3)
    torch.testing.assert_close(inc[mask], full[mask], atol=1e-5, rtol=1e-4)


def test_positions_past_the_tables_and_bad_parts_are_refused():
    from tevo.errors import ConfigError, InputError
    m = make_mixer("synthesizer", True, d=D, heads=H, synth="random", max_len=8)
    x = torch.randn(1, 9, D)
    with pytest.raises(InputError):
        m(x, ctx(x, True))
    for synth in ("conv", "dot+dot"):
        with pytest.raises(ConfigError):
            make_mixer("synthesizer", True, d=D, heads=H, synth=synth)
