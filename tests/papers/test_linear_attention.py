"""Linear attention (Katharopoulos et al., 2020): three forms agree; equals the naive equation;
cost linear in n; fp32 state under bf16 autocast; guarded denominators."""
import pytest
import torch

from tiny import make_mixer
from papers.linear_reference import (assert_rel_close, ctx, flops, forms_agree, left_padded,
                                     prefill_then_steps)

FORMS = ["recurrent", "parallel", "chunk", "scan"]
MAPS = ["elu+1", "relu", "exp", "softmax", {"name": "dpfp", "nu": 1}]


@pytest.mark.parametrize("fmap", MAPS, ids=lambda m: m if isinstance(m, str) else m["name"])
def test_three_forms_agree_outputs_state_and_grads(fmap):
    m = make_mixer("linear", True, feature_map=fmap, chunk=4)
    x, mask = left_padded()
    forms_agree(m, FORMS, x, mask)


def _naive(m, x, causal, mask=None):
    """Eq. 2 with sim(q, k) = φ(q)ᵀφ(k), one query at a time."""
    B, n, _ = x.shape
    h, e = m.heads, m.head_dim
    q = m.q_proj(x).view(B, n, h, e).transpose(1, 2)
    k = m.k_proj(x).view(B, n, h, e).transpose(1, 2)
    v = m.v_proj(x).view(B, n, h, e).transpose(1, 2)
    fq, fk = m.fmap(q, is_query=True), m.fmap(k)
    out = torch.zeros(B, h, n, e)
    for b in range(B):
        for i in range(n):
            js = [j for j in range(n) if (j <= i or not causal) and (mask is None or mask[b, j])]
            sim = torch.stack([(fq[b, :, i] * fk[b, :, j]).sum(-1) for j in js], -1)  # (h, |js|)
            out[b, :, i] = (sim.unsqueeze(-1) * v[b][:, js]).sum(1) \
                / sim.sum(-1, keepdim=True)
    return m.o_proj(out.transpose(1, 2).reshape(B, n, h * e))


@pytest.mark.parametrize("causal", [True, False])
def test_linear_equals_naive_kernel_attention(causal):
    m = make_mixer("linear", causal, chunk=4)
    x = torch.randn(2, 9, 16)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    y, _ = m(x, ctx(x, causal, mask))
    ref = _naive(m, x, causal, mask)
    assert_rel_close(y[mask], ref[mask], 1e-5)


def test_prefill_then_steps_and_state_size():
    m = make_mixer("linear", True, chunk=4)
    x, mask = left_padded(n=15)
    y_inc, y_full, st = prefill_then_steps(m, x, mask)
    assert_rel_close(y_inc[mask], y_full[mask], 1e-5)
    assert st["S"].shape == (2, m.heads, m.fmap.out_dim, m.head_dim)
    assert st["z"].shape == (2, m.heads, m.fmap.out_dim) and st["S"].dtype == torch.float32


def test_chunk_form_cost_is_linear_in_n():
    """O(n) time: doubling n doubles the FLOPs of the chunk form (the parallel form's grow 4×
    in the quadratic term)."""
    m = make_mixer("linear", True, chunk=16)
    f = {n: flops(lambda n=n: m(torch.randn(1, n, 16), ctx(torch.randn(1, n, 16), True)))
         for n in (256, 512)}
    assert 1.9 < f[512] / f[256] < 2.1
    m.form = "parallel"
    fp = {n: flops(lambda n=n: m(torch.randn(1, n, 16), ctx(torch.randn(1, n, 16), True)))
          for n in (256, 512)}
    assert fp[512] / fp[256] > 3.0


def test_bf16_autocast_keeps_fp32_state_and_accuracy():
    m = make_mixer("linear", True, chunk=4)
    x, mask = left_padded()
    y32, s32 = m(x, ctx(x, True, mask), m.init_state(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16, s16 = m(x, ctx(x, True, mask), m.init_state(2))
    assert s16["S"].dtype == torch.float32 and s16["z"].dtype == torch.float32
    assert_rel_close(s16["S"], s32["S"], 3e-2)
    assert_rel_close(y16.float()[mask], y32[mask], 5e-2)


def test_denominator_is_guarded():
    """relu features can make φ(q)ᵀz exactly 0 (all-negative query): outputs stay finite."""
    m = make_mixer("linear", True, feature_map="relu", chunk=4)
    with torch.no_grad():
        m.q_proj.weight.zero_()
        m.q_proj.bias.fill_(-1.0) if m.q_proj.bias is not None else None
    x = torch.randn(2, 7, 16)
    y, _ = m(x, ctx(x, True))
    assert torch.isfinite(y).all()


def test_bad_options_are_one_line_config_errors():
    from tevo.errors import ConfigError
    for bad in ({"form": "fast"}, {"feature_map": "nope"}, {"normalize": "l2"}):
        with pytest.raises(ConfigError) as e:
            make_mixer("linear", True, **bad)
        assert "\n" not in str(e.value) and "valid" in str(e.value)


RECURRENT = ["linear", "performer", "rfa", "learned_kernel", "cosformer", "simpletron",
             "momentum", "fast_weight", "recurrent_fwp", "flowformer", "flash_linear", "aft",
             "aft_mixture", "separable", "yoso"]


@pytest.mark.parametrize("name", RECURRENT)
def test_recurrent_states_accumulate_in_fp32_under_bf16_autocast(name):
    """Every causal linear mixer keeps its state in fp32 under bf16 autocast, and the state has
    the same size after 4 and after 16 tokens (it does not grow with n)."""
    m = make_mixer(name, True)
    sizes = []
    for n in (4, 16):
        x = torch.randn(2, n, 16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, st = m(x, ctx(x, True), m.init_state(2))
        floats = {k: v for k, v in st.items() if torch.is_tensor(v) and v.is_floating_point()}
        assert floats and all(v.dtype == torch.float32 for v in floats.values()), name
        assert torch.isfinite(y.float()).all()
        sizes.append({k: tuple(v.shape) for k, v in st.items()})
    assert sizes[0] == sizes[1]
