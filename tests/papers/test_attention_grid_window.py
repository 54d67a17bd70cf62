"""NesT blocks, Swin (shifted) windows and CrossFormer's SDA/LDA groups each equal full
attention over the whole grid with the mask "same group" (and, for shifted windows, "same
region before the cyclic shift"), written here from the papers' definitions by coordinates."""
import pytest
import torch

from tevo.errors import ConfigError
from tevo.nn.context import MixerContext
from tevo.registry import MIXERS, POSITIONS

H, W, D = 4, 6, 8


def coords():
    i = torch.arange(H * W)
    return i // W, i % W


def group_ids(name, layer, win):
    """Each token's group from its (row, col), straight from each paper's description."""
    r, c = coords()
    a, b = win
    if name == "nest" or (name == "crossformer_lsda" and layer % 2 == 0) or \
            (name == "swin_window" and layer % 2 == 0):
        return (r // a) * W + (c // b)                        # adjacent blocks
    if name == "crossformer_lsda":                             # interval I = H/a, W/b
        return (r % (H // a)) * W + (c % (W // b))
    # Swin shifted: windows of the grid rolled by (a/2, b/2), plus "same region" so pairs that
    # only meet because of the cyclic roll are masked
    sa, sb = a // 2, b // 2
    rr, cc = (r - sa) % H, (c - sb) % W                       # rolled coordinates
    win_id = (rr // a) * W + (cc // b)
    reg_r = (rr >= H - a).long() + (rr >= H - sa).long()
    reg_c = (cc >= W - b).long() + (cc >= W - sb).long()
    return win_id * 9 + reg_r * 3 + reg_c


@pytest.mark.parametrize("name,layer", [("nest", 0), ("swin_window", 0), ("swin_window", 1),
                                        ("crossformer_lsda", 0), ("crossformer_lsda", 1)])
@pytest.mark.parametrize("with_pos", [False, True])
def test_groups_equal_masked_full_attention(name, layer, with_pos):
    torch.manual_seed(0)
    win = (2, 2) if name != "crossformer_lsda" else (2, 3)
    opt = "group" if name == "crossformer_lsda" else "window"
    m = MIXERS.build({"name": name, opt: list(win), "heads": 2}, d_model=D, layer=layer,
                     grid=[H, W]).eval()
    pos = POSITIONS.build({"name": "swin_cpb", "width": W, "hidden": 8}, heads=2,
                          max_len=H * W) if with_pos else None
    x = torch.randn(2, H * W, D)
    y, _ = m(x, MixerContext(grid=(H, W), pos=pos))
    g = group_ids(name, layer, win)
    mask = (g[:, None] == g[None, :]).unsqueeze(0)             # (1, n, n)
    positions = torch.arange(H * W).unsqueeze(0).expand(2, -1)
    ref, _ = m.inner(x, MixerContext(positions=positions, pos=pos, attn_mask=mask))
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-4)
    assert mask.float().mean() < 0.5                           # not full attention


def test_window_larger_than_grid_or_not_tiling_is_one_line():
    with pytest.raises(ConfigError, match=r"window: a 5×5 window is larger than the 4×6 grid"):
        MIXERS.build({"name": "swin_window", "window": 5}, d_model=D, grid=[4, 6])
    with pytest.raises(ConfigError, match="does not tile"):
        MIXERS.build({"name": "nest", "window": 4}, d_model=D, grid=[4, 6])
    with pytest.raises(ConfigError, match="inner"):
        MIXERS.build({"name": "nest", "inner": "gfnet"}, d_model=D)
