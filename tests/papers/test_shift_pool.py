"""PoolFormer's pool (Yu et al., 2022, eq. 4) is 3×3 average pooling (stride 1, padding not
counted) minus the identity; ShiftViT's shift (Wang et al., 2022) has no parameters and moves
exactly the four channel groups of the released shift_feat, one pixel each."""
import torch

from tevo.nn.context import MixerContext
from tevo.registry import MIXERS


def test_pool_is_average_pooling_minus_identity():
    torch.manual_seed(0)
    H, W, d = 4, 5, 3
    m = MIXERS.build({"name": "pool", "pool_size": 3}, d_model=d)
    assert not list(m.parameters())
    x = torch.randn(2, H * W, d)
    y, _ = m(x, MixerContext(grid=(H, W)))
    g = x.view(2, H, W, d)
    ref = torch.zeros_like(g)
    for i in range(H):                           # mean over the in-image 3×3 neighbours
        for j in range(W):
            nb = g[:, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2]
            ref[:, i, j] = nb.mean((1, 2)) - g[:, i, j]
    torch.testing.assert_close(y.view(2, H, W, d), ref)
    # 1-D text: a centred window; causal: the last K tokens only
    x1 = torch.randn(1, 7, d)
    yb, _ = m(x1, MixerContext())
    torch.testing.assert_close(yb[0, 3], x1[0, 2:5].mean(0) - x1[0, 3])
    torch.testing.assert_close(yb[0, 0], x1[0, :2].mean(0) - x1[0, 0])
    mc = MIXERS.build({"name": "pool", "pool_size": 3, "causal": True}, d_model=d)
    yc, _ = mc(x1, MixerContext(causal=True))
    torch.testing.assert_close(yc[0, 4], x1[0, 2:5].mean(0) - x1[0, 4])
    torch.testing.assert_close(yc[0, 0], torch.zeros(d))


def test_shift_moves_exactly_the_papers_channels():
    torch.manual_seed(0)
    H, W, d = 4, 5, 24                           # n_div = 12 → g = 2 channels per direction
    m = MIXERS.build("shift", d_model=d)
    assert not list(m.parameters())
    x = torch.randn(1, H * W, d)
    y, _ = m(x, MixerContext(grid=(H, W)))
    g, out = x.view(H, W, d), y.view(H, W, d)
    for i in range(H):
        for j in range(W):
            exp = g[i, j].clone()
            exp[0:2] = g[i, j + 1, 0:2] if j + 1 < W else 0            # left
            exp[2:4] = g[i, j - 1, 2:4] if j > 0 else 0                # right
            exp[4:6] = g[i + 1, j, 4:6] if i + 1 < H else 0            # up
            exp[6:8] = g[i - 1, j, 6:8] if i > 0 else 0                # down
            torch.testing.assert_close(out[i, j], exp)
    # exactly 4·(d/12) = 8 channels move, the other 16 stay
    moved = (out != g).any(0).any(0)
    assert moved[:8].all() and not moved[8:].any()
