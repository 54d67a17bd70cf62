"""Query-Key Normalization for Transformers (Henry et al., 2020): softmax(g·q̂k̂ᵀ)V with
l2-normalised queries and keys and a learned scale g initialised to log₂(L² − L)."""
import math

import pytest
import torch

import tevo
from tevo.registry import MIXERS


def test_qk_norm_attention_formula_and_scale_invariance():
    torch.manual_seed(0)
    m = MIXERS.build({"name": "qk_norm", "heads": 4}, d_model=32, max_len=128).eval()
    assert m.g.item() == pytest.approx(math.log2(128 ** 2 - 128))
    x = torch.randn(2, 7, 32)
    ctx = tevo.MixerContext(causal=True, positions=torch.arange(7).expand(2, 7))
    y, _ = m(x, ctx)
    q = m.q_proj(x).view(2, 7, 4, 8).transpose(1, 2)
    k = m.k_proj(x).view(2, 7, 4, 8).transpose(1, 2)
    v = m.v_proj(x).view(2, 7, 4, 8).transpose(1, 2)
    qh, kh = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
    s = m.g * qh @ kh.transpose(-1, -2)
    s = s.masked_fill(torch.triu(torch.ones(7, 7, dtype=torch.bool), 1), float("-inf"))
    ref = m.o_proj((s.softmax(-1) @ v).transpose(1, 2).reshape(2, 7, 32))
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-4)
    # scores are cosines times g: rescaling the query and key projections changes nothing
    with torch.no_grad():
        for lin in (m.q_proj, m.k_proj):
            lin.weight.mul_(25.0)
            lin.bias.mul_(25.0)
    torch.testing.assert_close(m(x, ctx)[0], y, atol=1e-5, rtol=1e-4)
    # and every score lies in [−g, g]
    assert s[torch.isfinite(s)].abs().max() <= m.g.item() + 1e-4
    # in a model: g is learned; the `max_len` of the model sets g₀
    model = tevo.build_model({"arch": "gpt", "vocab_size": 30, "d_model": 32, "n_layers": 1,
                              "max_len": 64, "mixer": {"name": "qk_norm", "heads": 4}})
    att = model.blocks.blocks[0].sublayers[0]
    assert att.g.item() == pytest.approx(math.log2(64 * 63))
    model(torch.randint(0, 30, (2, 8))).logits.logsumexp(-1).mean().backward()
    assert att.g.grad is not None and att.g.grad != 0
