"""gMLP (Liu et al., 2021): Y = (Z₁ ⊙ (W·LN(Z₂) + b)) V with Z = GELU(XU); the causal spatial
gating uses W's lower triangle only (token t mixes tokens ≤ t), so cached decoding equals
the full pass, with and without aMLP's tiny attention."""
import pytest
import torch
import torch.nn.functional as F

from tevo.nn.context import MixerContext
from tevo.registry import MIXERS


def build(causal, attn_dim=0, d=8, max_len=16):
    torch.manual_seed(0)
    m = MIXERS.build({"name": "gmlp", "mult": 2, "attn_dim": attn_dim}, d_model=d,
                     max_len=max_len, causal=causal)
    with torch.no_grad():
        m.weight.normal_()                       # far from the near-zero init
        m.bias.normal_()
    return m.eval()


@pytest.mark.parametrize("causal", [False, True])
def test_gmlp_matches_formula_and_causal_gate_is_lower_triangular(causal):
    m = build(causal)
    n = 7
    x = torch.randn(2, n, 8)
    y, _ = m(x, MixerContext(causal=causal))
    z1, z2 = F.gelu(m.proj_in(x)).chunk(2, -1)
    Wn = m.weight[:n, :n]
    if causal:
        Wn = torch.tril(Wn)
    ref = m.out_proj(z1 * (Wn @ m.norm(z2) + m.bias[:n, None]))
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    # the gate's dependence on other tokens: lower-triangular exactly when causal
    J = torch.autograd.functional.jacobian(lambda t: m(t, MixerContext(causal=causal))[0],
                                           x[:1]).abs().sum((0, 2, 3, 5))        # (n, n)
    upper = J[torch.ones(n, n, dtype=torch.bool).triu(1)]                       # key > query
    assert (upper == 0).all() if causal else (upper > 0).all()


@pytest.mark.parametrize("attn_dim", [0, 4])
def test_gmlp_decode_equals_full_pass(attn_dim):
    m = build(True, attn_dim)
    x = torch.randn(2, 9, 8)
    full, _ = m(x, MixerContext(causal=True))
    st = m.init_state(2)
    y, st = m(x[:, :4], MixerContext(causal=True), st)
    outs = [y]
    for t in range(4, 9):
        y, st = m(x[:, t:t + 1], MixerContext(causal=True,
                                              positions=torch.full((2, 1), t)), st)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)
    if attn_dim:                                 # aMLP's attention changes the output
        m0 = build(True, 0)
        m0.load_state_dict(m.state_dict(), strict=False)
        assert not torch.allclose(m0(x, MixerContext(causal=True))[0], full)
