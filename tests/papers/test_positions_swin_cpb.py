"""Swin V2 continuous position bias: with the MLP copied, HF Swinv2SelfAttention's output is
reproduced from tevo's bias; the bias depends only on the (Δy, Δx) offset."""
import math

import torch

from tevo.positions.swin_cpb import SwinContinuousBias


def test_swin_cpb_matches_hf_swinv2_bias():
    from transformers import Swinv2Config
    from transformers.models.swinv2.modeling_swinv2 import Swinv2SelfAttention
    torch.manual_seed(8)
    dim, h, wh, ww = 16, 2, 3, 4
    cfg = Swinv2Config(attention_probs_dropout_prob=0.0)
    ref = Swinv2SelfAttention(cfg, dim, h, (wh, ww)).eval()
    with torch.no_grad():
        for p in ref.continuous_position_bias_mlp.parameters():
            p.normal_(0, 0.5)
    pe = SwinContinuousBias(max_len=64, heads=h, width=ww, window=[wh, ww])
    pe.mlp.load_state_dict(ref.continuous_position_bias_mlp.state_dict())
    x = torch.randn(2, wh * ww, dim)
    y_ref = ref(x)[0]
    # the same cosine attention, with tevo's bias
    split = lambda t: t.view(2, -1, h, dim // h).transpose(1, 2)      # noqa: E731
    q, k, v = split(ref.query(x)), split(ref.key(x)), split(ref.value(x))
    nq, nk = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1)
    cos = nq @ nk.transpose(-1, -2)
    scale = torch.clamp(ref.logit_scale, max=math.log(1.0 / 0.01)).exp()
    pos = torch.arange(wh * ww).expand(2, -1)
    attn = (cos * scale + pe.bias(q, k, pos, pos)).softmax(-1)
    y = (attn @ v).transpose(1, 2).reshape(2, -1, dim)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-4)


def test_swin_cpb_depends_only_on_the_offset():
    q = torch.zeros(1, 2, 10, 4)
    pos = torch.arange(10).unsqueeze(0)
    one_d = SwinContinuousBias(max_len=64, heads=2, hidden=16)
    torch.testing.assert_close(one_d.bias(q, q, pos + 7, pos + 7), one_d.bias(q, q, pos, pos))
    grid = SwinContinuousBias(max_len=64, heads=2, width=4, hidden=16)
    torch.testing.assert_close(grid.bias(q, q, pos + 8, pos + 8), grid.bias(q, q, pos, pos))
    # a shift that is not a whole number of rows changes the 2D offsets
    assert not torch.allclose(grid.bias(q, q, pos + 1, pos + 1), grid.bias(q, q, pos, pos))
