"""Huang et al. method 4: the bias equals (q_i·a_ij + k_j·a_ij)/√d computed pair by pair."""
import math

import torch

from tevo.positions.huang_rpe import HuangRelativePosition


def test_huang_method4_equals_naive_formula():
    torch.manual_seed(3)
    e, kmax = 8, 4
    pe = HuangRelativePosition(e, max_distance=kmax)
    q, k = torch.randn(2, 4, 6, e), torch.randn(2, 2, 10, e)             # GQA: 2 key heads
    k_pos = torch.tensor([[0, 0, 0, 0, 1, 2, 3, 4, 5, 6], list(range(10))])
    q_pos = k_pos[:, -6:]
    out = pe.bias(q, k, q_pos, k_pos)
    ref = torch.zeros_like(out)
    for b in range(2):
        for h in range(4):
            for i in range(6):
                for j in range(10):
                    d = int(k_pos[b, j] - q_pos[b, i])
                    a = pe.rel.weight[max(-kmax, min(kmax, d)) + kmax]
                    ref[b, h, i, j] = (q[b, h, i] @ a + k[b, h // 2, j] @ a) / math.sqrt(e)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    # the full method-4 score q·k + q·a + k·a is unchanged by a common shift of positions
    torch.testing.assert_close(pe.bias(q, k, q_pos + 9, k_pos + 9), out)
