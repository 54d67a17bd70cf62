"""MEFT (Liao et al., 2023): each layer's inverse reconstructs its inputs (1e-5); the backward
that recomputes activations gives the gradients of ordinary back-propagation; the activations
kept for backward do not grow with depth and are below those of fine-tuning with stored
activations; λ → 0 starts from the pre-trained model; bad options are one line."""
from __future__ import annotations

import pytest
import torch

import tevo
from tevo.errors import ConfigError
from tevo.nn.context import MixerContext
from tevo.peft.meft import MEFT
from tevo.registry import PEFT


def _model(layers=2, d=16):
    torch.manual_seed(0)
    return tevo.build_model("gpt2", n_layers=layers, d_model=d, vocab_size=30, max_len=32,
                            dropout=0.0, mixer={"name": "softmax", "heads": 2})


def _randomise(meft):
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in meft.adapters.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def test_meft_inverse_reconstructs_the_inputs():
    assert PEFT.get("meft").obj is MEFT
    model = _model()
    m = PEFT.build({"name": "meft", "rank": 4}, "peft", model=model)
    _randomise(m)
    x1, x2 = torch.randn(2, 2, 10, 16).unbind(0)
    ctx = MixerContext(causal=True, pos=model.pos,
                       positions=torch.arange(10)[None].expand(2, 10))
    with torch.no_grad():
        for i in range(len(m)):
            a, b = m.layer(i, x1, x2, ctx)
            r1, r2 = m.inverse(i, a, b, ctx)
            torch.testing.assert_close(r1, x1, atol=1e-5, rtol=0)
            torch.testing.assert_close(r2, x2, atol=1e-5, rtol=0)


def _saved_bytes(fn):
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total[0]


def test_meft_backward_equals_autograd_and_memory_is_flat_in_depth():
    ids = torch.randint(0, 30, (2, 16))
    grads, saved = {}, {}
    for layers in (2, 4):
        for saving in (True, False):
            model = _model(layers)
            m = MEFT(model, rank=4, lam=0.5, memory_saving=saving)
            _randomise(m)
            out, nbytes = _saved_bytes(lambda: model(ids).logits)
            out.square().mean().backward()
            grads[layers, saving] = [p.grad.clone() for p in m.trainable_parameters()]
            saved[layers, saving] = nbytes
    for layers in (2, 4):
        for a, b in zip(grads[layers, True], grads[layers, False]):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert saved[2, True] == saved[4, True]                     # flat in depth
    assert saved[4, False] > 4 * saved[4, True]                 # stored activations
    _, full = _saved_bytes(lambda: _model(4)(ids).logits)       # full fine-tuning
    assert full > 10 * saved[4, True]


def test_meft_starts_from_the_pretrained_model_as_lambda_goes_to_zero():
    ids = torch.randint(0, 30, (2, 12))
    base = _model().eval()
    ref = base(ids).logits.detach()
    errs = []
    for lam in (1e-1, 1e-3):
        model = _model().eval()
        MEFT(model, rank=4, lam=lam)
        errs.append(float((model(ids).logits.detach() - ref).abs().max()))
    assert errs[1] < 1e-2 and errs[1] < errs[0] / 10


def test_meft_bad_options_are_one_line():
    for spec in ({"name": "meft", "rank": 0}, {"name": "meft", "lam": 0.0},
                 {"name": "meft", "beta": 1.5}):
        with pytest.raises(ConfigError) as e:
            PEFT.build(spec, "peft", model=_model())
        assert "\n" not in str(e.value)
