"""Reversible residual layers with a chunked FFN (Reformer, Kitaev et al., 2020, §3): each layer's
input is recovered from its output, the backward pass that recomputes activations instead of
storing them gives the gradients of ordinary back-propagation through the same network, the
activations kept for backward do not grow with depth, and chunking the FFN changes nothing."""
import pytest
import torch

import tevo
from tevo.errors import ConfigError
from tevo.nn.context import MixerContext
from tiny import cached_logits

V = 19


def _model(n_layers=3, chunks=2, memory_saving=True, **kw):
    torch.manual_seed(0)
    return tevo.build_model({"arch": "gpt", "vocab_size": V, "d_model": 16, "n_layers": n_layers,
                             "max_len": 64, "mixer": {"name": "softmax", "heads": 2},
                             "position": "rope",
                             "extra": {"reversible": {"chunks": chunks,
                                                      "memory_saving": memory_saving}}, **kw})


def test_backward_without_stored_activations_equals_standard_backward():
    """Same weights, same loss: the reversible backward (outputs stored, inputs recomputed
    layer by layer) and autograd through the stored graph give the same gradients, for every
    parameter and for the embeddings; the forward values are identical."""
    rev, std = _model(), _model(memory_saving=False)
    std.load_state_dict(rev.state_dict())
    ids = torch.randint(0, V, (2, 12))
    grads = {}
    for name, m in (("rev", rev), ("std", std)):
        m.train()
        emb = []

        def keep(mod, inp, out, emb=emb):
            out.retain_grad()
            emb.append(out)
        m.drop.register_forward_hook(keep)
        out = m(ids)
        loss = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1),
                                                 ids[:, 1:].flatten())
        loss.backward()
        grads[name] = ({n: p.grad.clone() for n, p in m.named_parameters()}, emb[0].grad,
                       out.logits.detach())
    (gr, er, lr), (gs, es, ls) = grads["rev"], grads["std"]
    torch.testing.assert_close(lr, ls, atol=0, rtol=0)
    torch.testing.assert_close(er, es, atol=1e-6, rtol=1e-5)
    for n in gs:
        torch.testing.assert_close(gr[n], gs[n], atol=1e-6, rtol=1e-5, msg=n)
    assert all(g.abs().sum() > 0 for g in gr.values())


def test_each_layer_is_inverted_from_its_output():
    """X2 = Y2 − G(Y1), X1 = Y1 − F(X2) recovers the layer's inputs (to float rounding)."""
    model = _model().eval()
    stack = model.blocks
    ctx = MixerContext(causal=True, positions=torch.arange(10).expand(2, 10), pos=model.pos)
    x1, x2 = torch.randn(2, 10, 16), torch.randn(2, 10, 16)
    with torch.no_grad():
        for i in range(3):
            y1, y2 = stack.pair(i, x1, x2, ctx)
            r1, r2 = stack.inverse(i, y1, y2, ctx)
            torch.testing.assert_close(r1, x1, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(r2, x2, atol=1e-5, rtol=1e-5)
            x1, x2 = y1, y2


def _saved_bytes(model, ids) -> int:
    """Bytes of the tensors autograd keeps for backward during one training forward (the
    activation memory of a step; parameters are not counted)."""
    params = {p.data_ptr() for p in model.parameters()}
    total = [0]

    def pack(t):
        if t.data_ptr() not in params:
            total[0] += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids).logits.sum()
    return total[0]


def test_activation_memory_is_flat_in_depth():
    """Saved activations: the standard stack grows by one layer's worth per layer, the
    reversible one keeps only (Y1, Y2) plus the embedding and head: the same at 2, 4 and 8."""
    ids = torch.randint(0, V, (2, 32))
    rev = [_saved_bytes(_model(L).train(), ids) for L in (2, 4, 8)]
    std = [_saved_bytes(_model(L, memory_saving=False).train(), ids) for L in (2, 4, 8)]
    assert rev[0] == rev[1] == rev[2], rev
    per_layer = (std[2] - std[1]) / 4
    assert per_layer > 0 and abs((std[1] - std[0]) / 2 - per_layer) < 1e-6 * per_layer, std
    assert std[2] > rev[2] + 6 * per_layer


def test_chunked_feed_forward_equals_the_whole_sequence_and_decoding_equals_the_full_pass():
    ids = torch.randint(0, V, (2, 11))
    one, four = _model(chunks=1).eval(), _model(chunks=4).eval()
    with torch.no_grad():
        torch.testing.assert_close(four(ids).logits, one(ids).logits, atol=1e-6, rtol=1e-6)
        mask = torch.ones(2, 11, dtype=torch.bool)
        mask[0, :3] = False
        full = four(ids, attention_mask=mask).logits
        cached = cached_logits(four, ids, mask, prefill=5)
    torch.testing.assert_close(cached[mask], full[mask], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("over,field", [
    ({"residual": "post_ln"}, "model.residual"),
    ({"dropout": 0.1}, "model.dropout"),
    ({"layout": "p"}, "model.layout"),
    ({"extra": {"reversible": {"chunks": 0}}}, "model.extra.reversible.chunks"),
    ({"extra": {"reversible": {"chunk": 2}}}, "model.extra.reversible"),
])
def test_what_cannot_be_reversible_is_a_one_line_error(over, field):
    cfg = {"arch": "gpt", "vocab_size": V, "d_model": 16, "n_layers": 2,
           "mixer": {"name": "softmax", "heads": 2}, "position": "rope",
           "extra": {"reversible": True}, **over}
    with pytest.raises(ConfigError) as e:
        tevo.build_model(cfg)
    assert str(e.value).startswith(field) and "\n" not in str(e.value)
