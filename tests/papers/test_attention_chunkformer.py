"""ChunkFormer: one stage is attention under a block-diagonal mask; stages grow with depth."""
import torch

import tevo
from tevo.nn.attention import eager_attention
from tevo.nn.context import MixerContext, positions_from_mask
from tiny import make_mixer


def test_chunkformer_one_stage_matches_block_diagonal_reference():
    n, c = 11, 4
    for causal in (False, True):
        m = make_mixer("chunkformer", causal, heads=2, chunks=[c])
        x = torch.randn(2, n, 16)
        mask = torch.ones(2, n, dtype=torch.bool)
        if causal:
            mask[1, :3] = False                         # left padding: chunks start at token 3
        else:
            mask[1, 8:] = False
        ctx = MixerContext(causal=causal, key_padding_mask=mask,
                           positions=positions_from_mask(mask, n))
        y, _ = m(x, ctx)
        q, k, v = (m._split(p(x), 2) for p in (m.q_proj, m.k_proj, m.v_proj))
        pos = ctx.positions
        block = (pos[:, :, None] // c == pos[:, None, :] // c) & mask[:, None, :]
        if causal:
            block &= torch.ones(n, n, dtype=torch.bool).tril()
        ref = m.o_proj(eager_attention(q, k, v, mask=block[:, None]).transpose(1, 2).reshape(2, n, 16))
        torch.testing.assert_close(y[mask], ref[mask], atol=1e-5, rtol=1e-4)


def test_chunkformer_stages_grow_with_depth():
    model = tevo.build_model({"arch": "gpt", "vocab_size": 50, "d_model": 16, "n_layers": 4,
                              "max_len": 64, "mixer": {"name": "chunkformer", "heads": 2,
                                                       "chunks": [2, 4]}})
    mixers = [b.sublayers[0] for b in model.blocks.blocks]
    assert [m.chunk for m in mixers] == [2, 2, 4, 4]
    x = torch.randn(1, 8, 16, requires_grad=True)
    for m, width in ((mixers[0], 2), (mixers[3], 4)):
        y, _ = m(x, MixerContext(causal=False))
        g, = torch.autograd.grad(y[0, 5].sum(), x)
        reach = g[0].abs().sum(-1) > 0
        start = 5 // width * width
        assert reach.nonzero().flatten().tolist() == list(range(start, start + width))
