"""Clustered attention: with C = n clusters (every query its own centroid) it is softmax
attention; improved clustering with k = n is softmax too; with few clusters, queries of one
cluster share one attention row and the improved variant is closer to softmax."""
import torch

from tevo.mixers.attention.clustered import kmeans_queries
from tevo.nn.context import MixerContext
from tiny import make_mixer


def _pair(**kw):
    a = make_mixer("clustered", False, heads=2, **kw)
    b = make_mixer("softmax", False, heads=2, impl="eager")
    b.load_state_dict(a.state_dict())
    return a, b


def test_clustered_with_n_clusters_equals_softmax():
    n = 10
    x = torch.randn(2, n, 16)
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, 7:] = False
    ctx = MixerContext(key_padding_mask=mask)
    for kw in ({"clusters": n}, {"clusters": n + 3}, {"clusters": 2, "topk": n}):
        a, b = _pair(**kw)
        torch.testing.assert_close(a(x, ctx)[0][mask], b(x, ctx)[0][mask], atol=1e-5, rtol=1e-4)


def test_clusters_share_attention_and_improved_variant_is_closer():
    n = 24
    x = torch.randn(1, n, 16)
    a, ref = _pair(clusters=4, iterations=5)
    imp, _ = _pair(clusters=4, iterations=5, topk=6)
    imp.load_state_dict(a.state_dict())
    y_ref = ref(x, MixerContext())[0]
    err = lambda m: (m(x, MixerContext())[0] - y_ref).norm() / y_ref.norm()
    assert err(imp) < err(a)
    q = a._split(a.q_proj(x), 2)
    assign, cent = kmeans_queries(q, torch.ones(1, n, dtype=torch.bool), 4, 5)
    assert assign.max() < 4 and cent.shape == (1, 2, 4, 8)
    # every query's output (before o_proj) is its cluster's single attention row applied to V
    k, v = a._split(a.k_proj(x), 2), a._split(a.v_proj(x), 2)
    y = a.attend(q, k, v, None, None, MixerContext())
    for hh in range(2):
        for c in assign[0, hh].unique():
            rows = y[0, hh, assign[0, hh] == c]
            torch.testing.assert_close(rows, rows[:1].expand_as(rows))
    # Lloyd's k-means: every query is nearest to its own centroid
    d = torch.cdist(q.detach(), cent.detach())
    torch.testing.assert_close(d.gather(-1, assign.unsqueeze(-1)).squeeze(-1), d.amin(-1))


def test_clustered_outputs_equal_explicit_loops_of_eqs_6_and_9():
    """With few clusters (C < n) and padding, the plain and improved outputs against a per-query
    loop of the paper's equations, given the k-means clusters: centroid = mean of its member
    queries; eq. 6 V̂_i = softmax(Q^c Kᵀ/√d) V; eq. 9 exact softmax on the cluster's top-k keys
    scaled by its mass m̂, the centroid weights elsewhere. A centroid that is not the member
    mean, a top-k taken per query, or an unscaled exact part would fail."""
    import math
    torch.manual_seed(5)
    n, e, C, topk = 14, 8, 3, 4
    x = torch.randn(2, n, 16)
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, 10:] = False
    ctx = MixerContext(key_padding_mask=mask)
    for kw in ({}, {"topk": topk}):
        a, _ = _pair(clusters=C, iterations=3, **kw)
        q, k, v = (a._split(p(x), 2) for p in (a.q_proj, a.k_proj, a.v_proj))
        y = a.attend(q, k, v, None, None, ctx)
        assign, _ = kmeans_queries(q, mask, C, 3)
        with torch.no_grad():
            for b in range(2):
                keys = mask[b].nonzero().flatten().tolist()
                for hh in range(2):
                    for i in keys:
                        members = [j for j in keys if assign[b, hh, j] == assign[b, hh, i]]
                        cen = q[b, hh, members].mean(0)
                        A = torch.softmax(torch.stack([cen @ k[b, hh, j] for j in keys])
                                          / math.sqrt(e), 0)
                        if not kw:
                            want = sum(A[t] * v[b, hh, j] for t, j in enumerate(keys))
                        else:
                            top = A.topk(topk).indices.tolist()
                            mass = A[top].sum()
                            ex = torch.softmax(torch.stack([q[b, hh, i] @ k[b, hh, keys[t]]
                                                            for t in top]) / math.sqrt(e), 0)
                            want = sum(mass * ex[s] * v[b, hh, keys[t]]
                                       for s, t in enumerate(top))
                            want = want + sum(A[t] * v[b, hh, j] for t, j in enumerate(keys)
                                              if t not in top)
                        torch.testing.assert_close(y[b, hh, i], want, atol=1e-5, rtol=1e-4)
