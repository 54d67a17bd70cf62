"""Reversible residual layers and chunked feed-forward (Reformer).

Paper: Reformer: The Efficient Transformer (Kitaev, Kaiser & Levskaya, 2020), §3 (after RevNets,
Gomez et al., 2017):
    Y1 = X1 + F(X2),   Y2 = X2 + G(Y1)          F = attention sublayer, G = feed-forward sublayer
    X2 = Y2 − G(Y1),   X1 = Y1 − F(X2)          (the inverse: each layer's input from its output)
    G applied in c chunks along the sequence: G([y⁽¹⁾; …; y⁽ᶜ⁾]) = [G(y⁽¹⁾); …; G(y⁽ᶜ⁾)]
Training stores only the last layer's (Y1, Y2); the backward pass walks the layers in reverse,
recomputing each layer's input from its output and back-propagating through F and G on the
fly, so activation memory does not grow with depth (O(n·d) instead of O(L·n·d)), at the price of
recomputing every layer once. The chunked G keeps the FFN's n × d_ff activation at n/c × d_ff.

How it wraps a tevo model: each block of layout ``a f`` with pre-norm residuals gives
F(x) = drop(mixer(norm₁ x)) and G(x) = drop(ffn(norm₂ x)) (its own weights, unchanged); the stack
starts from X1 = X2 = x (the embeddings) and returns (Y1 + Y2)/2 to the final norm, as the
Reformer implementation merges the two streams. Decoding with a cache runs the same two-stream
recurrence without the custom backward (nothing to store at inference).

Simplifications, said here: dropout must be 0 (the recomputation would need each layer's RNG
state); sublayer auxiliary losses (MoE balance, ...) are not collected inside the recomputed
forward, so FFNs that add them are refused; parameter gradients are accumulated directly inside
the backward pass (as RevNet implementations do).

Complexity: time ≈ 1.5–2× a standard step (one extra forward per layer in backward); activation
memory O(n d) for the stored outputs + one layer's working set, flat in depth L.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..nn.context import MixerContext
from ..registry import PEFT


def _check_chunks(chunks) -> int:
    if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
        raise ConfigError("model.extra.reversible.chunks", chunks, why="an integer >= 1")
    return chunks


class _ReversibleFunction(torch.autograd.Function):
    """Forward without a graph, keeping only the outputs; backward recomputes layer inputs."""

    @staticmethod
    def forward(fctx, x1, x2, stack, mctx):
        with torch.no_grad():
            for i in range(len(stack.blocks)):
                x1, x2 = stack.pair(i, x1, x2, mctx)
        fctx.stack, fctx.mctx = stack, mctx
        fctx.save_for_backward(x1, x2)
        return x1, x2

    @staticmethod
    def backward(fctx, dy1, dy2):
        stack, mctx = fctx.stack, fctx.mctx
        y1, y2 = fctx.saved_tensors
        for i in reversed(range(len(stack.blocks))):
            # G: x2 = y2 − G(y1); ∂/∂y1 gets G's input gradient, chunk by chunk
            y1 = y1.detach()
            g_parts, dy1_g = [], []
            for sl, part in stack.chunked(y1):
                with torch.enable_grad():
                    part = part.detach().requires_grad_(True)
                    g = stack.G(i, part, mctx)
                    torch.autograd.backward(g, dy2[:, sl])
                g_parts.append(g.detach())
                dy1_g.append(part.grad)
            with torch.no_grad():
                x2 = y2 - torch.cat(g_parts, 1)
                dy1 = dy1 + torch.cat(dy1_g, 1)
            # F: x1 = y1 − F(x2); ∂/∂x2 = dy2 + F's input gradient
            with torch.enable_grad():
                x2 = x2.detach().requires_grad_(True)
                f = stack.F(i, x2, mctx)
                torch.autograd.backward(f, dy1)
            with torch.no_grad():
                x1 = y1 - f.detach()
                dy2 = dy2 + x2.grad
            y1, y2 = x1, x2.detach()
        return dy1, dy2, None, None


@PEFT.register(
    "reversible", paper="Reformer: The Efficient Transformer (Kitaev et al., 2020); The "
                        "Reversible Residual Network (Gomez et al., 2017)",
    equation="§3: Y1 = X1 + F(X2), Y2 = X2 + G(Y1); X2 = Y2 − G(Y1), X1 = Y1 − F(X2); "
             "G chunked over the sequence",
    complexity=("≈ 2× forward work per step (recompute in backward)",
                "O(n·d) activations, flat in depth; FFN O(n/c · d_ff)"),
    test="tests/papers/test_peft_reversible.py::"
         "test_backward_without_stored_activations_equals_standard_backward",
    tiny={"chunks": 2})
class ReversibleStack(nn.Module):
    """A model's block stack run as reversible residual layers (F = mixer, G = chunked FFN) whose
    backward recomputes activations instead of storing them."""

    def __init__(self, stack: nn.Module, chunks: int = 1, memory_saving: bool = True):
        super().__init__()
        self.chunks = _check_chunks(chunks)
        self.memory_saving = bool(memory_saving)
        self.blocks = stack.blocks                      # the same blocks: same parameter names
        self._final_norm = stack.final_norm
        for i, blk in enumerate(self.blocks):
            if blk.layout != ["a", "f"]:
                raise ConfigError("model.layout", " ".join(blk.layout), ["a f"],
                                  why="reversible layers pair one mixer (F) with one FFN (G)")
            for res in blk.residuals:
                if type(res).__name__ != "PreNormResidual":
                    raise ConfigError("model.residual", getattr(res, "registry_name", "?"),
                                      ["pre_ln"], why="reversible layers need F(x) = f(norm x) "
                                                      "without a norm on the residual stream")
                if res.drop.p > 0:
                    raise ConfigError("model.dropout", res.drop.p, [0.0],
                                      why="reversible recomputation would need each layer's "
                                          "RNG state")
            if getattr(blk.sublayers[1], "uses_ctx", False):
                raise ConfigError("model.ffn", getattr(blk.sublayers[1], "registry_name", "?"),
                                  why="reversible layers recompute the FFN outside the context "
                                      "that collects auxiliary losses")

    @property
    def final_norm(self) -> bool:
        return self._final_norm

    def __len__(self):
        return len(self.blocks)

    def init_state(self, batch: int, device=None, dtype=None) -> list:
        return [b.init_state(batch, device, dtype) for b in self.blocks]

    # -- the two residual functions of layer i --------------------------------------------
    def F(self, i: int, x: Tensor, mctx: MixerContext, state=None):
        blk = self.blocks[i]
        mctx.layer, mctx.n_layers = i, len(self.blocks)
        c = mctx.replace(causal=blk.causal)
        if hasattr(c.pos, "for_layer"):
            c = c.replace(pos=c.pos.for_layer(i))
        y, st = blk.sublayers[0](blk.residuals[0].norm(x), c, state)
        out = blk.residuals[0].drop(y)
        return out if state is None else (out, st)

    def G(self, i: int, x: Tensor, mctx: MixerContext) -> Tensor:
        blk = self.blocks[i]
        return blk.residuals[1].drop(blk.sublayers[1](blk.residuals[1].norm(x)))

    def chunked(self, x: Tensor):
        """(slice, x[:, slice]) for the c chunks of the sequence."""
        n = x.shape[1]
        size = -(-n // self.chunks)
        for s in range(0, n, size):
            yield slice(s, min(n, s + size)), x[:, s:s + size]

    def G_chunked(self, i: int, x: Tensor, mctx: MixerContext) -> Tensor:
        return torch.cat([self.G(i, part, mctx) for _, part in self.chunked(x)], 1)

    def pair(self, i: int, x1: Tensor, x2: Tensor, mctx: MixerContext):
        y1 = x1 + self.F(i, x2, mctx)
        return y1, x2 + self.G_chunked(i, y1, mctx)

    def inverse(self, i: int, y1: Tensor, y2: Tensor, mctx: MixerContext):
        """Layer i's input from its output: X2 = Y2 − G(Y1), X1 = Y1 − F(X2)."""
        x2 = y2 - self.G_chunked(i, y1, mctx)
        return y1 - self.F(i, x2, mctx), x2

    def forward(self, x: Tensor, ctx: MixerContext, state: list | None = None):
        """x (B, n, d) -> ((Y1 + Y2)/2 (B, n, d), per-layer mixer states or None)."""
        if state is not None:                                      # decoding: no backward
            new = []
            x1 = x2 = x
            for i in range(len(self.blocks)):
                f, st = self.F(i, x2, ctx, state[i].get(0, {}) if state[i] else {})
                x1 = x1 + f
                x2 = x2 + self.G_chunked(i, x1, ctx)
                new.append({0: st})
            return (x1 + x2) / 2, new
        if self.memory_saving and torch.is_grad_enabled() and x.requires_grad:
            y1, y2 = _ReversibleFunction.apply(x, x, self, ctx)
        else:
            y1 = y2 = x
            for i in range(len(self.blocks)):
                y1, y2 = self.pair(i, y1, y2, ctx)
        return (y1 + y2) / 2, None
