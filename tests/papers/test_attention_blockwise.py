"""Blockwise (BlockBERT) attention: matches dense attention with the equivalent mask M_π per
head group (padding skipped); one block equals softmax; memory O(n²/N_b)."""
import pytest
import torch

from papers.attention_reference import ctx, dense_pattern_attention, largest_intermediate
from tiny import make_mixer

D = 16


def _mask(n_heads_perm, lengths, n, nb):
    """M_π[i, j] = 1 iff π(⌊i/ℓ⌋) = ⌊j/ℓ⌋, ℓ = ⌈L/N_b⌉ for each sample's real length L."""
    B, h = len(lengths), len(n_heads_perm)
    M = torch.zeros(B, h, n, n, dtype=torch.bool)
    for b, L in enumerate(lengths):
        ell = -(-L // nb)
        for hh, perm in enumerate(n_heads_perm):
            for i in range(L):
                for j in range(L):
                    M[b, hh, i, j] = perm[i // ell] == j // ell
    return M


@pytest.mark.parametrize("nb,perms,split,heads", [(2, None, None, 2), (3, None, None, 4),
                                                  (3, [[2, 0, 1], [0, 1, 2]], [1, 3], 4),
                                                  (4, [[1, 0, 3, 2]], None, 2)])
def test_matches_dense_attention_with_equivalent_mask(nb, perms, split, heads):
    m = make_mixer("blockwise", False, d=D, heads=heads, n_blocks=nb, permutations=perms,
                   head_split=split)
    n = 14
    x = torch.randn(3, n, D)
    mask = torch.ones(3, n, dtype=torch.bool)
    mask[1, 11:], mask[2, 6:] = False, False                    # right padding
    head_perm = [p for p, s in zip(m.perms, m.head_split) for _ in range(s)]
    y, _ = m(x, ctx(x, False, mask))
    ref, M = dense_pattern_attention(m, x, _mask(head_perm, mask.sum(-1).tolist(), n, nb), mask)
    torch.testing.assert_close(y[mask], ref[mask], atol=1e-5, rtol=1e-4)
    if perms is None:   # default: cyclic shifts over heads, together covering every (i, j)
        assert M[0].any(0).all() or heads < nb


def test_one_block_equals_softmax():
    m = make_mixer("blockwise", False, d=D, heads=2, n_blocks=1)
    s = make_mixer("softmax", False, d=D, heads=2)
    s.load_state_dict(m.state_dict())
    x = torch.randn(2, 9, D)
    torch.testing.assert_close(m(x, ctx(x, False))[0], s(x, ctx(x, False))[0], atol=1e-5, rtol=1e-4)


def test_memory_is_n_squared_over_blocks():
    n = 256
    sizes = [largest_intermediate(make_mixer("blockwise", False, d=D, heads=2, n_blocks=nb),
                                  torch.randn(1, n, D), False) for nb in (2, 4, 8)]
    assert sizes[0] <= 2 * n * n // 2 and 1.8 < sizes[0] / sizes[1] < 2.2 < sizes[0] / sizes[2]


def test_bad_options_are_config_errors():
    from tevo.errors import ConfigError
    for kw in ({"n_blocks": 0}, {"permutations": [[0, 0]]}, {"head_split": [1, 2]},
               {"permutations": [[0, 1]], "head_split": [1, 1]}):
        with pytest.raises(ConfigError):
            make_mixer("blockwise", False, d=D, heads=2, **kw)
