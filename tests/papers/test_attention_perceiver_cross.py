"""Perceiver cross-attention: the latent self-attention stack sees m latents whatever n is
(its cost is independent of n) and the whole mixer's cost grows linearly in n; the causal
(Perceiver AR) form only updates the last m positions, each from inputs at or before it."""
import torch
from torch.utils.flop_counter import FlopCounterMode

from tevo.nn.context import MixerContext
from tiny import make_mixer


def _flops(module, *args):
    with FlopCounterMode(display=False) as fc:
        module(*args)
    return fc.get_total_flops()


def test_latent_stack_cost_is_independent_of_n():
    for causal in (False, True):
        m = make_mixer("perceiver_cross", causal, latents=4, heads=2, latent_layers=2)
        seen = []
        handles = [blk.register_forward_hook(lambda mod, args, out: seen.append((mod, args)))
                   for blk in m.blocks]
        totals = []
        for n in (16, 64, 256):
            seen.clear()
            x = torch.randn(1, n, 16)
            totals.append(_flops(m, x, MixerContext(causal=causal)))
            captured = list(seen)                           # (the FLOP count re-runs the blocks)
            stack = [(tuple(args[0].shape), _flops(mod, *args)) for mod, args in captured]
            assert len(stack) == 2 and all(s[0] == (1, 4, 16) for s in stack)
            if n == 16:
                first = stack
            assert stack == first                           # same shapes, same FLOPs
        for h in handles:
            h.remove()
        # the cross-attentions are linear in n: 4x the tokens, < 4.5x the FLOPs
        assert totals[2] / totals[1] < 4.5 and totals[1] / totals[0] < 4.5


def test_causal_perceiver_ar_updates_only_the_last_positions():
    m = make_mixer("perceiver_cross", True, latents=4, heads=2)
    x = torch.randn(2, 10, 16, requires_grad=True)
    y, _ = m(x, MixerContext(causal=True))
    assert (y[:, :6] == 0).all() and (y[:, 6:] != 0).all()
    g, = torch.autograd.grad(y[:, 7].sum(), x)                 # latent at position 7
    assert (g[:, 8:] == 0).all() and (g[:, :8].abs().sum(-1) > 0).all()
