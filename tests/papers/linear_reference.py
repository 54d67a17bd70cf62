"""Shared checks for the linear-attention paper tests (not a test module).

``forms_agree`` runs one mixer instance in each of its forms on the same left-padded batch and
compares outputs (real tokens), the final recurrent state and every gradient (input and
parameters); ``prefill_then_steps`` is the decode check; ``flops`` counts FLOPs of a forward.
"""
from __future__ import annotations

import torch

from tevo.nn.context import MixerContext, positions_from_mask

D = 16


def ctx(x, causal, mask=None, pos=None):
    positions = positions_from_mask(mask, x.shape[1], device=x.device)
    if mask is None:
        positions = positions.expand(x.shape[0], -1)
    return MixerContext(causal=causal, key_padding_mask=mask, positions=positions, pos=pos)


def left_padded(B=2, n=13, d=D, pad=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, n, d, generator=g)
    mask = torch.ones(B, n, dtype=torch.bool)
    mask[-1, :pad] = False
    return x, mask


def assert_rel_close(a, b, rel=1e-5, what=""):
    """‖a − b‖ ≤ rel · ‖b‖ + 1e-6 (a relative tolerance on the whole tensor: elementwise relative
    errors are meaningless on entries that happen to be near zero)."""
    a, b = a.detach().double(), b.detach().double()
    assert a.shape == b.shape, (what, a.shape, b.shape)
    err, ref = (a - b).norm().item(), b.norm().item()
    assert err <= rel * ref + 1e-6, f"{what}: relative error {err / max(ref, 1e-30):.2e} > {rel}"


def _flat_state(st):
    if isinstance(st, dict):
        return {k: v for k, v in st.items() if torch.is_tensor(v)}
    return {}


def run_form(m, form, x, mask, causal=True, attr="form"):
    setattr(m, attr, form)
    xr = x.clone().requires_grad_(True)
    y, st = m(xr, ctx(xr, causal, mask), m.init_state(x.shape[0]) if causal else None)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    m.zero_grad()
    ((y * w)[mask] if mask is not None else y * w).sum().backward()
    grads = {"x": xr.grad.clone()}
    grads.update({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    return y.detach(), _flat_state(st), grads


def forms_agree(m, forms, x, mask, causal=True, attr="form", rel=1e-5):
    """Every form gives the same real-token outputs, final state and gradients."""
    ref_form = forms[0]
    ref = run_form(m, ref_form, x, mask, causal, attr)
    for f in forms[1:]:
        got = run_form(m, f, x, mask, causal, attr)
        sel = mask if mask is not None else slice(None)
        assert_rel_close(got[0][sel], ref[0][sel], rel, f"outputs {f} vs {ref_form}")
        assert got[1].keys() == ref[1].keys()
        for k in ref[1]:
            assert_rel_close(got[1][k], ref[1][k], rel, f"state {k} {f} vs {ref_form}")
        assert got[2].keys() == ref[2].keys()
        for k in ref[2]:
            assert_rel_close(got[2][k], ref[2][k], rel, f"grad {k} {f} vs {ref_form}")
    return ref


def prefill_then_steps(m, x, mask, k=None, pos=None):
    """Prefill on the first k tokens, then one token at a time; returns (y_inc, y_full)."""
    B, n, _ = x.shape
    y_full, _ = m(x, ctx(x, True, mask, pos))
    k = n // 2 if k is None else k
    st = m.init_state(B)
    y, st = m(x[:, :k], ctx(x[:, :k], True, mask[:, :k], pos), st)
    ys = [y]
    for t in range(k, n):
        c = MixerContext(causal=True, key_padding_mask=mask[:, :t + 1],
                         positions=positions_from_mask(mask[:, :t + 1], 1), pos=pos)
        y, st = m(x[:, t:t + 1], c, st)
        ys.append(y)
    return torch.cat(ys, 1), y_full, st


def flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


class ShapeRecorder(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the shape of every tensor an op produces (to prove no n × n matrix appears)."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if torch.is_tensor(t):
                self.shapes.append(tuple(t.shape))
        return out
