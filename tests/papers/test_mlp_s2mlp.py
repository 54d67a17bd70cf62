"""S²-MLP / S²-MLPv2 (Yu et al.): the outputs equal the papers' equations with the shifts
written coordinate by coordinate (group k of c/4 channels reads one neighbour; the border keeps
its own value), and v2 fuses the three branches with softmax split attention."""
import torch
import torch.nn.functional as F

from tevo.nn.context import MixerContext
from tevo.registry import MIXERS

H, W, D = 3, 4, 8
# (row offset, col offset) each group reads from: S²-MLP and v2's second pattern
SHIFT1 = [(0, -1), (0, 1), (-1, 0), (1, 0)]
SHIFT2 = [(-1, 0), (1, 0), (0, -1), (0, 1)]


def shift_ref(g, pattern):
    """g (H, W, c): token (i, j), group k reads (i + di, j + dj) when inside, else itself."""
    out = g.clone()
    q = g.shape[-1] // 4
    for k, (di, dj) in enumerate(pattern):
        sl = slice(k * q, (k + 1) * q if k < 3 else None)
        for i in range(H):
            for j in range(W):
                si, sj = i + di, j + dj
                if 0 <= si < H and 0 <= sj < W:
                    out[i, j, sl] = g[si, sj, sl]
    return out


def test_s2mlp_and_v2_match_the_released_shifts():
    torch.manual_seed(0)
    x = torch.randn(2, H * W, D)
    ctx = MixerContext(grid=(H, W))
    m = MIXERS.build("s2mlp", d_model=D)
    y, _ = m(x, ctx)
    for b in range(2):
        h = shift_ref(F.gelu(m.fc1(x[b])).view(H, W, D), SHIFT1)
        torch.testing.assert_close(y[b], m.fc2(h.view(-1, D)))
    m2 = MIXERS.build("s2mlpv2", d_model=D)
    y2, _ = m2(x, ctx)
    for b in range(2):
        a, bb, e = m2.fc1(x[b]).chunk(3, -1)
        xs = [shift_ref(a.view(H, W, D), SHIFT1).view(-1, D),
              shift_ref(bb.view(H, W, D), SHIFT2).view(-1, D), e]
        s = sum(xs).mean(0)                                          # (D,)
        alpha = m2.attn(s).view(3, D).softmax(0)
        ref = m2.fc2(sum(alpha[k] * xs[k] for k in range(3)))
        torch.testing.assert_close(y2[b], ref, atol=1e-5, rtol=1e-5)
    # every channel of an interior token comes from one of its 4 neighbours, none from itself
    J = torch.autograd.functional.jacobian(lambda t: m(t, ctx)[0], x[:1])[0, 5].abs().sum((0, 1, 3))
    assert set(torch.nonzero(J).flatten().tolist()) == {1, 4, 6, 9}
