"""Top-k attention: k = n equals softmax; for k < n it equals a row-by-row "keep the k largest
scores" reference; chunking and checkpointing change neither outputs nor gradients."""
import pytest
import torch

from papers.attention_reference import ToyBias, ctx, prefill_then_steps, qkv
from tevo.nn.context import positions_from_mask
from tiny import make_mixer

D, H = 16, 2


def test_k_equal_n_equals_softmax():
    n = 11
    for causal in (True, False):
        for chunk in (3, 64):
            m = make_mixer("sparse_topk", causal, d=D, heads=H, topk=n, chunk=chunk)
            s = make_mixer("softmax", causal, d=D, heads=H)
            s.load_state_dict(m.state_dict())
            x = torch.randn(2, n, D)
            mask = torch.ones(2, n, dtype=torch.bool)
            mask[1, :4] = False
            y, _ = m(x, ctx(x, causal, mask))
            r, _ = s(x, ctx(x, causal, mask))
            torch.testing.assert_close(y[mask], r[mask], atol=1e-5, rtol=1e-4)


def _row_by_row(m, x, mask, k, causal):
    B, n, _ = x.shape
    q, kk, v = qkv(m, x)
    e = q.shape[-1]
    out = torch.zeros(B, H, n, e)
    for b in range(B):
        for h in range(H):
            for i in range(n):
                if not mask[b, i]:
                    continue
                allowed = [j for j in range(n) if mask[b, j] and (j <= i or not causal)]
                s = torch.stack([q[b, h, i] @ kk[b, h, j] / e ** 0.5 for j in allowed])
                order = sorted(range(len(allowed)), key=lambda t: -float(s[t]))[:k]
                w = s[order].softmax(0)
                out[b, h, i] = sum(w[t] * v[b, h, allowed[o]] for t, o in enumerate(order))
    return m.o_proj(out.transpose(1, 2).reshape(B, n, -1))


def test_keeps_exactly_the_top_k_scores_of_each_row():
    for causal in (True, False):
        m = make_mixer("sparse_topk", causal, d=D, heads=H, topk=3, chunk=4)
        x = torch.randn(2, 10, D)
        mask = torch.ones(2, 10, dtype=torch.bool)
        mask[1, :3] = False
        y, _ = m(x, ctx(x, causal, mask))
        with torch.no_grad():
            ref = _row_by_row(m, x, mask, 3, causal)
        torch.testing.assert_close(y[mask], ref[mask], atol=1e-5, rtol=1e-4)


def test_chunking_and_checkpointing_change_nothing():
    x = torch.randn(2, 13, D, requires_grad=True)
    outs, weights = [], None
    for chunk, ckpt in ((13, False), (4, False), (4, True)):
        m = make_mixer("sparse_topk", True, d=D, heads=H, topk=5, chunk=chunk, checkpoint=ckpt)
        weights = weights or m.state_dict()
        m.load_state_dict(weights)
        m.train()
        y, _ = m(x, ctx(x, True))
        g, = torch.autograd.grad(y.pow(2).sum(), x)
        outs.append((y.detach(), g))
    for y, g in outs[1:]:
        torch.testing.assert_close(y, outs[0][0])
        torch.testing.assert_close(g, outs[0][1])


@pytest.mark.parametrize("enc", [None, "bias"])
def test_decode_equals_full_pass(enc):
    m = make_mixer("sparse_topk", True, d=D, heads=H, topk=4, chunk=3)
    x = torch.randn(2, 12, D)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, :5] = False
    inc, full, _ = prefill_then_steps(m, x, mask, 5, ToyBias(H) if enc else None, chunk=2)
    torch.testing.assert_close(inc[mask], full[mask], atol=1e-5, rtol=1e-4)
    assert positions_from_mask(mask, 12).shape == (2, 12)


def test_bad_options_are_config_errors():
    from tevo.errors import ConfigError
    for kw in ({"topk": 0}, {"chunk": 0}):
        with pytest.raises(ConfigError):
            make_mixer("sparse_topk", True, d=D, heads=H, **kw)
