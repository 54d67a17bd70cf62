"""DeLighT (Mehta et al., 2021), §3.1: DExTra, group linear transforms with feature shuffling
and an input mixer, expanding to w_m·d_m and reducing back."""
import pytest
import torch
import torch.nn.functional as F

import tevo
from tevo.ffn.delight import GroupLinear


def _glt_reference(glt: GroupLinear, x):
    """Block-diagonal linear map: group g reads its input slice with its own matrix."""
    g, di, do = glt.groups, glt.d_in // glt.groups, glt.d_out // glt.groups
    outs = [x[..., i * di:(i + 1) * di] @ glt.weight[i] + glt.bias[i] for i in range(g)]
    y = torch.stack(outs, -2)                                 # (..., g, d_out/g)
    if glt.shuffle and g > 1:                                 # channel shuffle: interleave
        y = y.transpose(-1, -2)
    return y.reshape(*x.shape[:-1], glt.d_out)


def _mix_reference(x, y, g):
    xs, ys = x.chunk(g, -1), y.chunk(g, -1)
    return torch.cat([t for pair in zip(xs, ys) for t in pair], -1)


def test_dextra_matches_its_equations():
    torch.manual_seed(0)
    f = tevo.build("ffn", {"name": "delight", "depth": 5, "max_groups": 4, "width_mult": 2.0},
                   d_model=32)
    # group schedule: min(2^l, g_max) expanding, mirrored when reducing; widths d → 2d → d
    assert [g for _, _, g in f.schedule] == [2, 4, 4, 4, 2]
    assert [o for _, o, _ in f.schedule][-1] == 32
    assert max(o for _, o, _ in f.schedule) == 64
    assert all(i == (32 if l == 0 else f.schedule[l - 1][1] + 32)
               for l, (i, _, _) in enumerate(f.schedule))
    x = torch.randn(2, 5, 32)
    # eq. 1–2 written out with explicit block-diagonal maps and the input mixer H
    y = _glt_reference(f.layers[0], x)
    for glt in f.layers[1:]:
        y = _glt_reference(glt, _mix_reference(x, F.gelu(y), glt.groups))
    torch.testing.assert_close(f(x), y, atol=1e-5, rtol=1e-4)
    # a GLT is a block-diagonal dense map with 1/g of the weights
    glt = f.layers[1]
    dense = torch.block_diag(*glt.weight)                     # (d_in, d_out) before shuffle
    no_shuffle = GroupLinear(glt.d_in, glt.d_out, glt.groups, shuffle=False)
    no_shuffle.load_state_dict(glt.state_dict())
    v = torch.randn(3, glt.d_in)
    torch.testing.assert_close(no_shuffle(v), v @ dense + glt.bias.flatten())
    n_glt = sum(p.numel() for p in f.parameters() if p.dim() == 3)
    n_dense = sum(i * o for i, o, _ in f.schedule)
    assert n_glt < 0.4 * n_dense


def test_dextra_errors():
    with pytest.raises(tevo.ConfigError):
        tevo.build("ffn", {"name": "delight", "depth": 1}, d_model=32)
    with pytest.raises(tevo.ConfigError):
        tevo.build("ffn", {"name": "delight", "max_groups": 5}, d_model=32)
