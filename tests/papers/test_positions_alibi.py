"""ALiBi: the slopes are the paper's geometric sequence for every head count (checked against
BLOOM's and MPT's implementations), and the bias gives BLOOM's attention probabilities."""
import math

import pytest
import torch

from tevo.errors import ConfigError
from tevo.positions.alibi import ALiBiPosition, alibi_slopes


def _paper_get_slopes(n):
    """ofirpress/attention_with_linear_biases, fairseq/models/transformer.py ``get_slopes``."""
    def get_slopes_power_of_2(n):
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        return [start * start ** i for i in range(n)]
    if math.log2(n).is_integer():
        return get_slopes_power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return get_slopes_power_of_2(closest) + _paper_get_slopes(2 * closest)[0::2][:n - closest]


@pytest.mark.parametrize("heads", list(range(1, 17)) + [24, 48])
def test_alibi_slopes_match_paper_bloom_and_mpt(heads):
    from transformers.models.bloom.modeling_bloom import _get_alibi_slopes
    from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor
    ours = alibi_slopes(heads)
    torch.testing.assert_close(ours, torch.tensor(_paper_get_slopes(heads)), rtol=1e-6, atol=0)
    torch.testing.assert_close(ours, _get_alibi_slopes(heads, torch.device("cpu")),
                               rtol=1e-6, atol=0)
    mpt = build_mpt_alibi_tensor(heads, 2)[:, 0, 0]           # = -slope · 1 for the first key
    torch.testing.assert_close(ours, -mpt, rtol=1e-6, atol=0)
    if heads == 8:                                            # the paper's example: 1/2 … 1/256
        torch.testing.assert_close(ours, 0.5 ** torch.arange(1, 9).float())


def test_alibi_bias_gives_bloom_probabilities_and_mpt_last_row():
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor
    from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor
    B, h, n = 2, 6, 10
    mask = torch.ones(B, n, dtype=torch.long)
    mask[1, :3] = 0                                           # left padding in row 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    q = torch.randn(B, h, n, 4)
    ours = ALiBiPosition(h).bias(q, q, pos, pos)              # (B, h, n, n)
    bloom = build_alibi_tensor(mask, h, torch.float32).view(B, h, 1, n)
    scores = torch.randn(B, h, n, n)
    allowed = torch.ones(n, n).tril().bool() & mask.bool()[:, None, None, :]
    p_ours = (scores + ours).masked_fill(~allowed, float("-inf")).softmax(-1)
    p_bloom = (scores + bloom).masked_fill(~allowed, float("-inf")).softmax(-1)
    real = mask.bool()
    torch.testing.assert_close(p_ours[real[:, None, :, None].expand_as(p_ours)],
                               p_bloom[real[:, None, :, None].expand_as(p_bloom)],
                               atol=1e-6, rtol=1e-5)
    mpt = build_mpt_alibi_tensor(h, n)                        # (h, 1, n): bias of the last query
    torch.testing.assert_close(ours[0, :, -1], mpt[:, 0], atol=1e-6, rtol=0)


def test_alibi_is_symmetric_distance_and_checks_heads():
    pos = torch.arange(7).unsqueeze(0)
    b = ALiBiPosition(4).bias(torch.zeros(1, 4, 7, 2), None, pos, pos)
    torch.testing.assert_close(b, b.transpose(-1, -2))
    torch.testing.assert_close(b[0, 0, 6], -0.25 * torch.arange(6, -1, -1).float())
    with pytest.raises(ConfigError, match="heads"):
        ALiBiPosition(4).bias(torch.zeros(1, 3, 7, 2), None, pos, pos)
