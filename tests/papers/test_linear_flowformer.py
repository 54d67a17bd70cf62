"""Flowformer: equals a transcription of the official Flow-Attention equations (causal and
non-causal), padding-invariant; the causal form decodes from its running sums; all chunk forms
agree; flows are conserved (each source sends, each sink receives, a unit of flow)."""
import pytest
import torch

from tiny import make_mixer
from papers.linear_reference import (assert_rel_close, ctx, forms_agree, left_padded,
                                     prefill_then_steps)


def _reference(q, k, v, causal, eps=1e-6):
    """The official code's equations (queries/keys after sigmoid), no padding."""
    if not causal:
        inc = 1.0 / torch.einsum("nhld,nhd->nhl", q + eps, k.sum(2) + eps)
        out = 1.0 / torch.einsum("nhld,nhd->nhl", k + eps, q.sum(2) + eps)
        c_sink = torch.einsum("nhld,nhd->nhl", q + eps, (k * out[..., None]).sum(2) + eps)
        c_src = torch.einsum("nhld,nhd->nhl", k + eps, (q * inc[..., None]).sum(2) + eps)
        c_src = c_src.clamp(-1, 1)
        alloc = torch.sigmoid(c_sink)
        comp = c_src.softmax(-1) * k.shape[2]
        kv = torch.einsum("nhld,nhlm->nhdm", k, v * comp[..., None])
        return torch.einsum("nhld,nhdm->nhlm", q * inc[..., None], kv) * alloc[..., None]
    L = q.shape[2]
    inc = 1.0 / torch.einsum("nhld,nhld->nhl", q + eps, k.cumsum(2) + eps)
    out = 1.0 / torch.einsum("nhld,nhld->nhl", k + eps, q.cumsum(2) + eps)
    normal = (torch.arange(L).float() + 1.0)[None, None, :]
    inc, out = inc * normal, out * normal
    c_sink = torch.einsum("nhld,nhld->nhl", q + eps, (k * out[..., None]).cumsum(2) + eps) / normal
    c_src = torch.einsum("nhld,nhld->nhl", k + eps, (q * inc[..., None]).cumsum(2) + eps) / normal
    c_src = c_src.clamp(-1, 1)
    alloc = torch.sigmoid(c_sink)
    c_src = c_src.exp()
    comp = (c_src / c_src.cumsum(-1)) * normal
    kv = torch.einsum("nhld,nhlm->nhldm", k, v * comp[..., None]).cumsum(2)
    x = torch.einsum("nhld,nhldm->nhlm", q * (inc[..., None] / normal[..., None]), kv)
    return x * alloc[..., None]


@pytest.mark.parametrize("causal", [True, False])
def test_flow_attention_equals_reference_equations(causal):
    m = make_mixer("flowformer", causal, chunk=4)
    x = torch.randn(2, 11, 16)
    y, _ = m(x, ctx(x, causal))
    B, n, _ = x.shape
    h, e = m.heads, m.head_dim
    q, k, v = (p(x).view(B, n, h, e).transpose(1, 2) for p in (m.q_proj, m.k_proj, m.v_proj))
    ref = _reference(torch.sigmoid(q), torch.sigmoid(k), v, causal)
    assert_rel_close(y, m.o_proj(ref.transpose(1, 2).reshape(B, n, h * e)), 1e-5)


def test_flows_are_conserved():
    """With the outgoing normalisation every source sends exactly one unit of flow, and with the
    incoming one every sink receives one (ε = 0, non-causal)."""
    q, k = torch.rand(1, 1, 7, 4), torch.rand(1, 1, 7, 4)
    out = 1.0 / (k * q.sum(2, keepdim=True)).sum(-1)
    inc = 1.0 / (q * k.sum(2, keepdim=True)).sum(-1)
    cap = q @ k.transpose(-1, -2)                                    # capacities φ(q_i)ᵀφ(k_j)
    torch.testing.assert_close((cap * out[..., None, :]).sum(-2), torch.ones(1, 1, 7))
    torch.testing.assert_close((cap * inc[..., :, None]).sum(-1), torch.ones(1, 1, 7))


def test_causal_forms_and_decoding_agree():
    m = make_mixer("flowformer", True, chunk=4)
    x, mask = left_padded(n=13)
    forms_agree(m, ["recurrent", "parallel", "chunk", "scan"], x, mask)
    y_inc, y_full, _ = prefill_then_steps(m, x, mask)
    assert_rel_close(y_inc[mask], y_full[mask], 1e-5)
