"""On Layer Normalizations and Residual Connections in Transformers (Takase et al., 2022), eq. 7:
post-LN plus a bottom-to-top connection from the layer input to the layer's last LN."""
import torch

import tevo


def test_b2t_block_formula():
    torch.manual_seed(0)
    model = tevo.build_model({"arch": "gpt", "vocab_size": 50, "d_model": 32, "n_layers": 2,
                              "max_len": 32, "residual": "b2t",
                              "mixer": {"name": "softmax", "heads": 4}}).eval()
    assert model.norm is None                                # post-LN family: no final norm
    blk = model.blocks.blocks[0]
    attn, ffn = blk.sublayers
    r_a, r_f = blk.residuals
    assert not r_a.is_last and r_f.is_last
    x = torch.randn(2, 10, 32)
    ctx = tevo.MixerContext(causal=True, positions=torch.arange(10).expand(2, 10))
    h = r_a.norm(x + attn(x, ctx)[0])                        # h = LN(x + Attn(x))
    ref = r_f.norm(h + ffn(h) + x)                           # y = LN(h + FFN(h) + x)
    torch.testing.assert_close(blk(x, ctx)[0], ref)
    # without the B2T term it is exactly post-LN: the extra connection is what differs
    post = r_f.norm(h + ffn(h))
    assert (blk(x, ctx)[0] - post).abs().max() > 1e-2


def test_b2t_decoder_adds_the_layer_input_only_before_the_last_norm():
    torch.manual_seed(0)
    model = tevo.build_model({"arch": "transformer", "vocab_size": 30, "d_model": 32,
                              "n_layers": 1, "max_len": 32, "residual": "b2t",
                              "mixer": {"name": "softmax", "heads": 4}}).eval()
    blk = model.decoder.blocks[0]
    assert blk.layout == ["a", "c", "f"]
    assert [r.is_last for r in blk.residuals] == [False, False, True]
    x, mem = torch.randn(2, 6, 32), torch.randn(2, 5, 32)
    ctx = tevo.MixerContext(causal=True, positions=torch.arange(6).expand(2, 6), context=mem)
    sa, ca, ff = blk.sublayers
    h1 = blk.residuals[0].norm(x + sa(x, ctx)[0])
    h2 = blk.residuals[1].norm(h1 + ca(h1, ctx)[0])
    ref = blk.residuals[2].norm(h2 + ff(h2) + x)
    torch.testing.assert_close(blk(x, ctx)[0], ref)
