"""DeFINE (Mehta et al., 2020), §3: a small V×n embedding table, a hierarchical group
transformation whose groups halve level by level with split-and-mix input connections, and a
linear map to the model width."""
import pytest
import torch
import torch.nn.functional as F

import tevo


def test_define_embedding_matches_its_equations():
    torch.manual_seed(0)
    V, d = 1000, 64
    emb = tevo.build("embedding", {"name": "define", "d_embed": 16, "width": 64, "depth": 3,
                                   "max_groups": 4}, vocab_size=V, d_model=d)
    assert [g for _, _, g in emb.schedule] == [4, 2, 1]     # hierarchical: g_max/2^{l−1}
    assert [o for _, o, _ in emb.schedule][-1] == 64         # widths n = 16 → k = 64
    ids = torch.randint(0, V, (2, 7))
    out = emb(ids)
    assert out.shape == (2, 7, d)
    # slow reference: per-group matrices and the split-and-mix connection, written out
    e = emb.table.weight[ids]
    y = None
    for lvl, glt in enumerate(emb.levels):
        inp = e if lvl == 0 else torch.cat(
            [t for pair in zip(e.chunk(glt.groups, -1), y.chunk(glt.groups, -1)) for t in pair], -1)
        di = glt.d_in // glt.groups
        parts = [inp[..., g * di:(g + 1) * di] @ glt.weight[g] + glt.bias[g]
                 for g in range(glt.groups)]
        z = torch.stack(parts, -2)
        y = F.gelu(z.reshape(*inp.shape[:-1], glt.d_out))
    ref = emb.out(torch.cat([e, y], -1))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    # the factorisation: far fewer parameters than a V×d table
    n = sum(p.numel() for p in emb.parameters())
    assert n < 0.5 * V * d
    # a token's vector depends on that token only
    ids2 = ids.clone()
    ids2[:, 3] = (ids2[:, 3] + 1) % V
    keep = [i for i in range(7) if i != 3]
    torch.testing.assert_close(emb(ids2)[:, keep], out[:, keep])
    out.sum().backward()
    assert all(p.grad is not None for p in emb.parameters())
    with pytest.raises(tevo.ConfigError):
        tevo.build("embedding", {"name": "define", "max_groups": 3}, vocab_size=V, d_model=d)


def test_define_as_the_input_embedding_of_a_language_model():
    import pytest
    import tevo
    from tevo.errors import ConfigError
    cfg = {"arch": "gpt", "vocab_size": 60, "d_model": 32, "n_layers": 1,
           "mixer": {"name": "softmax", "heads": 2}, "embedding": {"name": "define"},
           "tie_embeddings": False}
    m = tevo.build_model(cfg)
    assert type(m.embed).__name__ == "DefineEmbedding"
    ids = torch.randint(0, 60, (2, 7))
    m(ids).logits.sum().backward()
    assert all(p.grad is not None for p in m.embed.parameters())
    with pytest.raises(ConfigError, match="tie_embeddings"):
        tevo.build_model({**cfg, "tie_embeddings": True})
