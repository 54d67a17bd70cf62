"""Funnel-Transformer (Dai et al., 2020): each block after the first halves the sequence by
mean pooling, its first layer is pool-query-only attention (queries pooled, keys and values the
full block input), the decoder upsamples back and adds the first block's output; real tokens
are unaffected by right padding; FLOPs fall against BERT at equal depth."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import tevo
from tevo.errors import ConfigError
from tevo.models.funnel import mean_pool

V = 41


def funnel(blocks=(2, 2, 2), dec=2, **kw):
    torch.manual_seed(0)
    return tevo.build_model({"arch": "funnel", "vocab_size": V, "d_model": 16,
                             "n_layers": sum(blocks) + dec, "max_len": 64,
                             "position": "learned", "residual": "post_ln",
                             "mixer": {"name": "softmax", "heads": 2},
                             "extra": {"blocks": list(blocks), "decoder_layers": dec}, **kw}
                            ).eval()


def test_blocks_halve_the_sequence_with_pool_query_only_attention():
    m = funnel()
    ids = torch.randint(0, V, (2, 13))
    out = m(ids)
    assert out.logits.shape == (2, 13, V) and m.blocks.last_lengths == [13, 7, 4]
    # the first layer of block 2, by hand: post-LN(pool(h) + Attn(Q = pool(h), KV = h)), FFN
    seen = {}
    layer = m.blocks.layers[2]
    layer.register_forward_hook(lambda mod, args, o: seen.update(q=args[0], ctx=args[1], y=o[0]))
    m(ids)
    h, ctx = seen["ctx"].context, seen["ctx"]
    q = seen["q"]
    torch.testing.assert_close(q, mean_pool(h, None))
    torch.testing.assert_close(q[:, -1], h[:, -1])          # odd length: a window of one
    att, ffn = layer.sublayers
    a, _ = att(q, ctx)
    x = layer.residuals[0].norm(q + a)
    want = layer.residuals[1].norm(x + ffn(x))
    torch.testing.assert_close(seen["y"], want, atol=1e-5, rtol=1e-5)
    # the decoder: upsampled last block + the first block's output
    assert len(m.blocks.decoder) == 2


def test_real_tokens_ignore_right_padding_and_bad_options_are_one_line():
    m = funnel()
    ids = torch.randint(0, V, (1, 12))
    mask = torch.ones(1, 12, dtype=torch.bool)
    mask[0, 9:] = False
    a = m(ids, attention_mask=mask).hidden
    other = ids.clone()
    other[0, 9:] = (other[0, 9:] + 5) % V
    b = m(other, attention_mask=mask).hidden
    torch.testing.assert_close(a[0, :9], b[0, :9], atol=1e-6, rtol=1e-6)
    w = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    x = torch.randn(1, 4, 3)
    torch.testing.assert_close(mean_pool(x, w.bool()), torch.stack([x[0, :2].mean(0),
                                                                    x[0, 2]])[None])
    with pytest.raises(ConfigError, match="model.n_layers"):
        tevo.build_model({"arch": "funnel", "n_layers": 3, "position": "learned"})
    with pytest.raises(ConfigError, match="model.extra.blocks"):
        tevo.build_model({"arch": "funnel", "n_layers": 2, "position": "learned",
                          "extra": {"blocks": [0, 2], "decoder_layers": 0}})
    with pytest.raises(ConfigError, match="model.position"):
        tevo.build_model({"arch": "funnel", "n_layers": 8, "position": "rope"})
    with pytest.raises(ConfigError, match="model.causal"):
        tevo.build_model({"arch": "funnel", "n_layers": 8, "position": "learned",
                          "causal": True})


def test_flops_fall_against_bert_at_equal_depth():
    ids = torch.randint(0, V, (1, 256))

    def flops(m):
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            m(ids)
        return fc.get_total_flops()
    cfg = {"vocab_size": V, "d_model": 32, "n_layers": 8, "max_len": 256, "position": "learned",
           "mixer": {"name": "softmax", "heads": 2}}
    bert = flops(tevo.build_model({**cfg, "arch": "bert"}))
    fun = flops(tevo.build_model({**cfg, "arch": "funnel",
                                  "extra": {"blocks": [2, 2, 2], "decoder_layers": 2}}))
    assert fun < 0.75 * bert
