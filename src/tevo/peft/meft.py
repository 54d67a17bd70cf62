"""MEFT: memory-efficient fine-tuning by making the pre-trained model reversible.

Paper: Make Pre-trained Model Reversible: From Parameter to Memory Efficient Fine-Tuning
(Liao, Tan & Monz, NeurIPS 2023), §3, the MEFT₁ form. Each pre-trained block F_n (frozen, its
own residual included) is paired with a trainable adapter G_n in a reversible coupling whose
two outputs are swapped before the next layer,

    y¹ = λ·x¹ + F_n(x²),   y² = β·x² + G_n(y¹),   (x¹, x²) ← (y², y¹) for layer n+1
    inverse:  x² = (y² − G_n(y¹)) / β,   x¹ = (y¹ − F_n(x²)) / λ

from x¹ = x² = h_0 (the embeddings). With G_n = 0 (the adapter's up-projection starts at zero)
and λ → 0 the stream y¹ is the pre-trained hidden state h_n and y² carries h_{n−1}, so
fine-tuning starts from the pre-trained function (exactly so as λ → 0; λ is the paper's
small scaling, β = 1). The model's output is y¹ of the last layer.
Because every layer's input is recomputed from its output, backpropagation stores only the
last layer's (y¹, y²): activation memory O(n·d), flat in depth, instead of O(L·n·d) for
fine-tuning with stored activations; the price is one extra forward of each layer.

G_n(h) = ReLU(h W_down) W_up (a bottleneck adapter of rank r, Houlsby et al.); W_up = 0 at start.
The last layer's y² is never read, so its adapter would get no gradient: G_L = 0 (L − 1
adapters). Simplifications, said here: F_n is the whole frozen block without an adapter inside
it (the paper's MEFT₁ also puts one in F); dropout must be 0 (recomputation would need each layer's
RNG state); sublayer auxiliary losses are not collected in the recomputed forward.
Complexity: time ≈ 2 forwards + 1 backward per layer; activation memory O(n·d) + one layer's
working set; trainable parameters ≈ 2·d·r per layer.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..nn.context import MixerContext
from ..options import Option
from ..registry import PEFT
from .base import PeftMethod


class _Adapter(nn.Module):
    """G(h) = ReLU(h W_down) W_up, W_up = 0 at start."""

    def __init__(self, d: int, rank: int):
        super().__init__()
        self.down = nn.Linear(d, rank)
        self.up = nn.Linear(rank, d)
        nn.init.normal_(self.down.weight, std=1 / math.sqrt(d))
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: Tensor) -> Tensor:
        return self.up(torch.relu(self.down(h)))


class _MeftFunction(torch.autograd.Function):
    """Forward without a graph keeping the last (y¹, y²); backward recomputes each layer's
    input by the inverse and back-propagates through F_n and G_n one layer at a time."""

    @staticmethod
    def forward(fctx, x, stack, mctx, *params):
        with torch.no_grad():
            x1 = x2 = x
            for i in range(len(stack.blocks)):
                x1, x2 = stack.layer(i, x1, x2, mctx)
        fctx.stack, fctx.mctx = stack, mctx
        fctx.save_for_backward(x1, x2)
        return x1, x2

    @staticmethod
    def backward(fctx, da, db):
        stack, mctx = fctx.stack, fctx.mctx
        lam, beta = stack.lam, stack.beta
        a, b = fctx.saved_tensors                  # layer outputs after the swap: (y², y¹)
        params = list(stack.adapters.parameters())
        grads = [torch.zeros_like(p) for p in params]
        for i in reversed(range(len(stack.blocks))):
            y1, y2, dy1, dy2 = b, a, db, da
            if i < len(stack.adapters):
                with torch.enable_grad():          # G: x² = (y² − G(y¹))/β
                    y1v = y1.detach().requires_grad_(True)
                    g = stack.adapters[i](y1v)
                    gs = torch.autograd.grad(g, [y1v] + params, dy2, allow_unused=True)
                with torch.no_grad():
                    x2 = (y2 - g.detach()) / beta
                    dy1 = dy1 + gs[0]
                    for k, gp in enumerate(gs[1:]):
                        if gp is not None:
                            grads[k] += gp
            else:                                  # the last layer: G = 0
                x2 = y2 / beta
            with torch.enable_grad():              # F: x¹ = (y¹ − F(x²))/λ
                x2v = x2.detach().requires_grad_(True)
                f = stack.F(i, x2v, mctx)
                (gx2,) = torch.autograd.grad(f, [x2v], dy1)
            with torch.no_grad():
                x1 = (y1 - f.detach()) / lam
                da, db = lam * dy1, beta * dy2 + gx2
            a, b = x1, x2
        return (da + db, None, None, *grads)


@PEFT.register(
    "meft", paper="Make Pre-trained Model Reversible: From Parameter to Memory Efficient "
                  "Fine-Tuning (Liao, Tan & Monz, NeurIPS 2023), §3 MEFT₁",
    equation="y¹ = λx¹ + F_n(x²), y² = βx² + G_n(y¹), swap; x² = (y² − G(y¹))/β, "
             "x¹ = (y¹ − F(x²))/λ",
    complexity=("≈ 2 forwards + 1 backward per layer", "O(n·d) activations, flat in depth"),
    test="tests/papers/test_peft_meft.py::test_meft_inverse_reconstructs_the_inputs",
    options={"rank": Option(ge=1), "lam": Option(gt=0, le=1), "beta": Option(gt=0, le=1)})
class MEFT(PeftMethod, nn.Module):
    """The model's frozen blocks coupled with trainable adapters in a reversible stack."""

    name = "meft"

    def __init__(self, model: nn.Module, rank: int = 8, lam: float = 0.1, beta: float = 1.0,
                 memory_saving: bool = True):
        super().__init__()
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ConfigError("peft.rank", rank, why=f"must be an integer >= 1, got {rank!r}")
        for opt, v in (("lam", lam), ("beta", beta)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
                raise ConfigError(f"peft.{opt}", v, why=f"must be in (0, 1], got {v!r}")
        stack = getattr(model, "blocks", None)
        if stack is None or not hasattr(stack, "blocks"):
            raise ConfigError("peft", "meft", why="meft wraps a model's block stack "
                                                  "(model.blocks)")
        for p in model.parameters():
            p.requires_grad_(False)
        for m in model.modules():
            if isinstance(m, nn.Dropout) and m.p > 0:
                raise ConfigError("model.dropout", m.p, [0.0], why="meft recomputes layers in "
                                  "backward, which would need each layer's RNG state")
        self.lam, self.beta, self.memory_saving = float(lam), float(beta), bool(memory_saving)
        object.__setattr__(self, "model", model)
        self.blocks = stack.blocks                    # the same frozen blocks
        self._final_norm = stack.final_norm
        d = model.cfg.d_model
        if len(self.blocks) < 2:
            raise ConfigError("model.n_layers", len(self.blocks), why="meft needs at least 2 "
                              "layers (the last layer's adapter would not reach the output)")
        # the last layer's y² is never read, so its G would get no gradient: G_L = 0
        self.adapters = nn.ModuleList(_Adapter(d, rank) for _ in self.blocks[:-1])
        dev = next(model.parameters()).device
        self.adapters.to(dev)
        model.blocks = self

    # -- stack interface (BlockStack's) ----------------------------------------------------
    @property
    def final_norm(self) -> bool:
        return self._final_norm

    def __len__(self):
        return len(self.blocks)

    def init_state(self, batch: int, device=None, dtype=None) -> list:
        return [b.init_state(batch, device, dtype) for b in self.blocks]

    def F(self, i: int, x: Tensor, mctx: MixerContext, state=None):
        mctx.layer, mctx.n_layers = i, len(self.blocks)
        y, st = self.blocks[i](x, mctx, state)
        return y if state is None else (y, st)

    def G(self, i: int, h: Tensor) -> Tensor:
        return self.adapters[i](h) if i < len(self.adapters) else torch.zeros_like(h)

    def layer(self, i: int, x1: Tensor, x2: Tensor, mctx: MixerContext):
        """Layer i: (x¹, x²) → the next layer's input (y², y¹)."""
        y1 = self.lam * x1 + self.F(i, x2, mctx)
        y2 = self.beta * x2 + self.G(i, y1)
        return y2, y1

    def inverse(self, i: int, a: Tensor, b: Tensor, mctx: MixerContext):
        """Layer i's input (x¹, x²) from its swapped output (a, b) = (y², y¹)."""
        y1, y2 = b, a
        x2 = (y2 - self.G(i, y1)) / self.beta
        return (y1 - self.F(i, x2, mctx)) / self.lam, x2

    def forward(self, x: Tensor, ctx: MixerContext, state: list | None = None):
        """x (B, n, d) → (y¹ of the last layer (B, n, d), per-layer states or None)."""
        if state is not None:                                      # decoding: no backward
            new, x1, x2 = [], x, x
            for i in range(len(self.blocks)):
                f, st = self.F(i, x2, ctx, state[i])
                y1 = self.lam * x1 + f
                x1, x2 = self.beta * x2 + self.G(i, y1), y1
                new.append(st)
            return x2, new
        params = tuple(self.adapters.parameters())
        if self.memory_saving and torch.is_grad_enabled() and any(p.requires_grad
                                                                   for p in params):
            a, b = _MeftFunction.apply(x, self, ctx, *params)
        else:
            a = b = x
            for i in range(len(self.blocks)):
                a, b = self.layer(i, a, b, ctx)
        return b, None

    # -- PEFT interface --------------------------------------------------------------------
    def delta_parameters(self):
        return [(f"adapters.{k}", p) for k, p in self.adapters.named_parameters()]

    def trainable_parameters(self):
        return list(self.adapters.parameters())
