"""Average attention network: eq. 1-3 by a naive loop; decoding keeps an O(d) state."""
import torch

from tevo.nn.context import MixerContext, positions_from_mask
from tiny import make_mixer


def test_aan_equals_naive_loop_and_decodes_in_o1():
    m = make_mixer("aan", True, d_ff=24)
    x = torch.randn(2, 9, 16)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, :3] = False
    y, _ = m(x, MixerContext(causal=True, key_padding_mask=mask))
    for b in range(2):
        real = [t for t in range(9) if mask[b, t]]
        for j, t in enumerate(real):
            avg = torch.stack([x[b, s] for s in real[:j + 1]]).mean(0)
            g = m.ffn(avg)                                             # eq. 1
            i, f = torch.sigmoid(m.gate(torch.cat([x[b, t], g]))).chunk(2)   # eq. 2
            torch.testing.assert_close(y[b, t], i * x[b, t] + f * g, atol=1e-5, rtol=1e-4)
    st, sizes = m.init_state(2), []
    for t in range(9):
        c = MixerContext(causal=True, key_padding_mask=mask[:, :t + 1],
                         positions=positions_from_mask(mask[:, :t + 1], 1))
        yt, st = m(x[:, t:t + 1], c, st)
        torch.testing.assert_close(yt[:, 0][mask[:, t]], y[:, t][mask[:, t]], atol=1e-5, rtol=1e-4)
        sizes.append(sum(v.numel() for v in st.values()))
    assert len(set(sizes)) == 1 and sizes[0] == 2 * (16 + 1)          # running sum + count
