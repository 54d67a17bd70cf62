"""Large Memory Layers with Product Keys (Lample et al., 2019): the top-k over the product of two
half-key sets is the exact top-k over all N = |C|·|C'| keys; batch-normalised queries."""
import pytest
import torch

import tevo
from tiny import make_ffn


def _full_keys(pkm, h):
    """All n_keys² product keys of head h, concatenated [c_i ; c'_j] in index order i·√N + j."""
    c1, c2 = pkm.keys[h, 0], pkm.keys[h, 1]
    nk = pkm.n_keys
    return torch.cat([c1.repeat_interleave(nk, 0), c2.repeat(nk, 1)], dim=1)   # (nk², d_q)


def test_product_topk_equals_brute_force():
    torch.manual_seed(0)
    pkm = tevo.build("ffn", {"name": "pkm", "n_keys": 16, "heads": 3, "k_dim": 12, "topk": 5},
                     d_model=24).eval()
    q = torch.randn(40, 3, 12)
    scores, idx = pkm.search(q)
    for h in range(3):
        full = q[:, h] @ _full_keys(pkm, h).T                              # (T, 256) brute force
        ref_s, ref_i = full.topk(5, dim=-1)
        torch.testing.assert_close(scores[:, h], ref_s)
        assert torch.equal(idx[:, h], ref_i)
    # the whole layer equals the slow reference: BN(W_q x), brute-force top-k, softmax, Σ w v
    x = torch.randn(2, 7, 24)
    with torch.no_grad():
        pkm.query_bn.running_mean.normal_()
        pkm.query_bn.running_var.uniform_(0.5, 2.0)
    qx = pkm.query_bn(pkm.query(x.reshape(-1, 24))).view(-1, 3, 12)
    ref = torch.zeros(14, 24)
    for h in range(3):
        s, i = (qx[:, h] @ _full_keys(pkm, h).T).topk(5, dim=-1)
        ref += (s.softmax(-1).unsqueeze(-1) * pkm.values.weight[i]).sum(1)
    torch.testing.assert_close(pkm(x), ref.view(2, 7, 24), atol=1e-5, rtol=1e-4)


def test_batchnorm_queries_and_declared_position_wise():
    torch.manual_seed(0)
    pkm = make_ffn("pkm").train()
    assert isinstance(pkm.query_bn, torch.nn.BatchNorm1d)
    x = torch.randn(4, 10, 16) * 5 + 3
    seen = {}
    h = pkm.query_bn.register_forward_hook(lambda m, a, o: seen.update(q=o))
    pkm(x)
    h.remove()
    # §3.2: queries are batch-normalised over the tokens of the batch
    torch.testing.assert_close(seen["q"].mean(0), torch.zeros(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(seen["q"].var(0, unbiased=False), torch.ones(16), atol=1e-3, rtol=0)
    # training: statistics pool the batch, so a token's output depends on the others
    assert not pkm.position_wise
    y = pkm(x)
    x2 = x.clone()
    x2[:, 3] += 10
    assert not torch.allclose(pkm(x2)[:, 0], y[:, 0])
    # eval: running statistics, position-wise and batch-independent
    pkm.eval()
    assert pkm.position_wise
    torch.testing.assert_close(pkm(x2)[:, 0], pkm(x)[:, 0])
    torch.testing.assert_close(pkm(x[:1]), pkm(x)[:1])
    ln = tevo.build("ffn", {"name": "pkm", "n_keys": 8, "k_dim": 8, "topk": 2,
                            "query_norm": "layernorm"}, d_model=16).train()
    assert ln.position_wise


def test_values_group_sparse_update_and_errors():
    pkm = tevo.build("ffn", {"name": "pkm", "n_keys": 8, "heads": 2, "k_dim": 8, "topk": 3,
                             "sparse": True}, d_model=16)
    (g,) = pkm.optimizer_groups()
    assert g["params"][0] is pkm.values.weight and g["lr"] == 1e-3 and g["weight_decay"] == 0.0
    pkm(torch.randn(2, 5, 16)).sum().backward()
    grad = pkm.values.weight.grad
    assert grad.is_sparse
    touched = grad.coalesce().indices().unique().numel()
    assert touched <= 2 * 5 * 2 * 3                   # only the rows read are updated
    torch.optim.SparseAdam([pkm.values.weight], lr=1e-3).step()
    for bad in ({"k_dim": 7}, {"topk": 9}, {"query_norm": "rms"}):
        with pytest.raises(tevo.ConfigError):
            tevo.build("ffn", {"name": "pkm", "n_keys": 8, "k_dim": 8, "topk": 2, **bad},
                       d_model=16)
