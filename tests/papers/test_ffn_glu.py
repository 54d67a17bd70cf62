"""GLU Variants Improve Transformer (Shazeer, 2020): the gated FFNs' formulas (eqs. 5–6) and the
2/3 hidden-size rule that keeps the parameter count of the plain two-matrix FFN."""
import pytest
import torch
import torch.nn.functional as F

import tevo
from tevo.registry import FFNS

GATES = {"glu": torch.sigmoid, "geglu": F.gelu, "swiglu": lambda t: t * torch.sigmoid(t),
         "reglu": F.relu, "bilinear": lambda t: t}


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", sorted(GATES))
def test_glu_variants_formula_and_param_count_equals_mlp(name):
    torch.manual_seed(0)
    for d in (48, 96):                                  # d divisible by 3: 2/3·4d is an integer
        glu = FFNS.build(name, d_model=d)
        mlp = FFNS.build({"name": "mlp", "bias": False}, d_model=d)
        assert glu.d_ff == 8 * d // 3
        assert n_params(glu) == n_params(mlp) == 8 * d * d
        # the same count holds through a whole model built at the default ratio
        cfg = dict(vocab_size=50, d_model=d, n_layers=2, max_len=16)
        m_glu = tevo.build_model(cfg, ffn={"name": name})
        m_mlp = tevo.build_model(cfg, ffn={"name": "mlp", "bias": False})
        assert n_params(m_glu) == n_params(m_mlp)
    x = torch.randn(2, 5, 96)
    W, V, W2 = glu.gate_proj.weight, glu.up_proj.weight, glu.fc2.weight
    ref = (GATES[name](x @ W.T) * (x @ V.T)) @ W2.T     # eq. 6, no biases (§2)
    torch.testing.assert_close(glu(x), ref, atol=1e-5, rtol=1e-5)


def test_glu_options():
    f = FFNS.build({"name": "glu", "activation": "gelu"}, d_model=16)
    x = torch.randn(3, 16)
    torch.testing.assert_close(f(x), (F.gelu(f.gate_proj(x)) * f.up_proj(x)) @ f.fc2.weight.T)
    assert FFNS.build({"name": "swiglu", "d_ff": 40, "multiple_of": 32}, d_model=16).d_ff == 64
    assert FFNS.build({"name": "swiglu", "bias": True}, d_model=16).fc2.bias is not None
    with pytest.raises(tevo.ConfigError):
        FFNS.build({"name": "swiglu", "activation": "relu"}, d_model=16)   # fixed by the variant
