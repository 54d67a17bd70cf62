"""Parameter-efficient fine-tuning that adds no inference latency: PaFi and HiWi.

Paper: Parameter-Efficient Fine-Tuning without Introducing New Latency (Liao, Meng & Monz,
ACL 2023).

PaFi (§3.1), sparse fine-tuning with a task-agnostic mask: before any training, choose the
pre-trained parameters of smallest absolute magnitude (|w| ranked over all the model's
projection weights) and train only those,

    W = W_0 + M ⊙ Δ,   M_ij = 1  iff  |W_0,ij| is among the s·N smallest,   N = Σ |W|

stored here as the s·N values δ at the chosen flat indices (W = W_0 + scatter(idx, δ)), so
the trainable parameters and the saved delta are s·N numbers. Merging writes W_0 + M ⊙ Δ back
into the weights: the model is the base architecture again.

HiWi (§3.2), hidden-weight adapters: the adapter is applied to the pre-trained *weights* of
the FFN's first projection instead of to hidden states,

    W_1' = W_1 + f(W_1 A) B,   b_1' = b_1 + f(b_1 A) B        (W_1 ∈ R^{d×d_ff}, A ∈ R^{d_ff×r},
                                                              B ∈ R^{r×d_ff}, f = ReLU)

B starts at zero (so training starts from the pre-trained model); after fine-tuning W_1', b_1'
are computed once and stored, the adapter dropped: inference runs the base architecture.

Simplifications, said here: PaFi ranks the weights of every ``nn.Linear`` inside the blocks
(embeddings, norms and the tied head keep their values, as the paper keeps the embedding
frozen) and trains no biases; HiWi adapts the projections named in ``targets`` (default the
FFN's ``fc1``; ``gate_proj``/``up_proj`` for gated FFNs), one adapter per projection shared by
its weight and bias.
Complexity: PaFi: s·N trainable values, the forward adds one scatter per weight (training
only); HiWi: 2·d_ff·r per projection, O(d·d_ff·r) to form W_1' each training step; both: the
merged model costs exactly the base model's time and memory.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..errors import ConfigError
from ..options import Option
from ..registry import PEFT
from .base import PeftMethod


def _block_linears(model):
    """(name, nn.Linear) of the blocks' projections (not embeddings, head or norms)."""
    root = getattr(model, "blocks", model)
    prefix = "blocks." if root is not model else ""
    return [(prefix + n, m) for n, m in root.named_modules() if isinstance(m, nn.Linear)]


class _SparseDelta(nn.Module):
    """W = W_0 + scatter(idx, δ): the parametrisation of one PaFi weight."""

    def __init__(self, idx: Tensor, shape):
        super().__init__()
        self.register_buffer("idx", idx)
        self.delta = nn.Parameter(torch.zeros(idx.numel()))
        self.shape = tuple(shape)

    def forward(self, w0: Tensor) -> Tensor:
        flat = w0.reshape(-1).index_add(0, self.idx, self.delta.to(w0.dtype))
        return flat.view(self.shape)


@PEFT.register(
    "pafi", paper="Parameter-Efficient Fine-Tuning without Introducing New Latency (Liao, "
                  "Meng & Monz, ACL 2023), §3.1 PaFi",
    equation="W = W_0 + M ⊙ Δ, M = the s·N smallest |W_0| over the projection weights",
    complexity=("training: + one scatter per weight; merged: the base model",
                "s·N trainable values (+ their indices)"),
    test="tests/papers/test_peft_no_latency.py::test_pafi_trains_exactly_the_smallest_"
         "magnitude_weights",
    options={"sparsity": Option(gt=0, le=1, doc="fraction of the projection weights trained")})
class PaFi(PeftMethod):
    """Sparse fine-tuning of the smallest-magnitude pre-trained weights (no added latency)."""

    name = "pafi"

    def __init__(self, model: nn.Module, sparsity: float = 0.005):
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) \
                or not 0 < sparsity <= 1:
            raise ConfigError("peft.sparsity", sparsity, why=f"must be in (0, 1], got "
                                                            f"{sparsity!r}")
        self.model, self.sparsity = model, float(sparsity)
        linears = _block_linears(model)
        if not linears:
            raise ConfigError("peft", "pafi", why="the model has no linear projections in its "
                                                  "blocks to fine-tune")
        self._freeze_all(model)
        mags = torch.cat([m.weight.detach().abs().reshape(-1).float() for _, m in linears])
        k = max(1, math.ceil(self.sparsity * mags.numel()))
        # the k smallest magnitudes (ties broken by position, as a stable sort does)
        chosen = torch.zeros(mags.numel(), dtype=torch.bool)
        chosen[torch.sort(mags, stable=True).indices[:k].cpu()] = True
        self.n_trainable, self.n_total = k, mags.numel()
        self.modules, off = [], 0
        for name, m in linears:
            n = m.weight.numel()
            idx = chosen[off:off + n].nonzero().view(-1).to(m.weight.device)
            off += n
            if idx.numel():
                parametrize.register_parametrization(m, "weight", _SparseDelta(idx, m.weight.shape))
                self.modules.append((name, m))

    def delta_parameters(self):
        return [(f"{n}.delta", m.parametrizations.weight[0].delta) for n, m in self.modules]

    def delta_state(self):
        out = super().delta_state()
        for n, m in self.modules:
            out[f"{n}.idx"] = m.parametrizations.weight[0].idx.clone()
        return out

    def load_delta(self, state):
        for n, m in self.modules:
            i = state.get(f"{n}.idx")
            if i is None or not torch.equal(i.to(m.parametrizations.weight[0].idx.device),
                                            m.parametrizations.weight[0].idx):
                raise ConfigError("peft.delta", n, why="its PaFi mask differs from this base "
                                                       "model's smallest-magnitude weights")
        super().load_delta({k: v for k, v in state.items() if not k.endswith(".idx")})

    def merge(self) -> nn.Module:
        """Write W_0 + M ⊙ Δ into the weights and drop the parametrisation."""
        for _, m in self.modules:
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
        self.modules = []
        return self.model


class _HiWiAdapter(nn.Module):
    """X ↦ X + ReLU(X A) B on the rows of X (a weight W_1 ∈ R^{d×d_ff} or a bias b_1)."""

    def __init__(self, d_ff: int, rank: int):
        super().__init__()
        self.A = nn.Parameter(torch.randn(d_ff, rank) / math.sqrt(d_ff))
        self.B = nn.Parameter(torch.zeros(rank, d_ff))

    def forward(self, x: Tensor) -> Tensor:
        return x + torch.relu(x @ self.A.to(x.dtype)) @ self.B.to(x.dtype)


class _OnWeight(nn.Module):
    """The adapter on an nn.Linear weight (d_ff, d): applied to W_1 = weight^T."""

    def __init__(self, adapter):
        super().__init__()
        self.adapter = adapter

    def forward(self, w: Tensor) -> Tensor:
        return self.adapter(w.t()).t()


class _OnBias(nn.Module):
    def __init__(self, adapter):
        super().__init__()
        object.__setattr__(self, "adapter", adapter)     # owned by the weight's parametrisation

    def forward(self, b: Tensor) -> Tensor:
        return self.adapter(b)


@PEFT.register(
    "hiwi", paper="Parameter-Efficient Fine-Tuning without Introducing New Latency (Liao, "
                  "Meng & Monz, ACL 2023), §3.2 HiWi",
    equation="W_1' = W_1 + ReLU(W_1 A) B, b_1' = b_1 + ReLU(b_1 A) B; merged after training",
    complexity=("training: O(d·d_ff·r) per step to form W_1'; merged: the base model",
                "2·d_ff·r per adapted projection"),
    test="tests/papers/test_peft_no_latency.py::test_hiwi_merged_equals_unmerged_and_is_the_"
         "base_architecture",
    options={"rank": Option(ge=1, doc="adapter bottleneck r")})
class HiWi(PeftMethod):
    """Adapters applied to the FFN's pre-trained weights, merged after training."""

    name = "hiwi"

    def __init__(self, model: nn.Module, rank: int = 8, targets: tuple = ("fc1",)):
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ConfigError("peft.rank", rank, why=f"must be an integer >= 1, got {rank!r}")
        targets = tuple([targets] if isinstance(targets, str) else targets)
        self.model, self.rank = model, rank
        found = [(n, m) for n, m in _block_linears(model) if n.split(".")[-1] in targets]
        if not found:
            raise ConfigError("peft.targets", list(targets), ["fc1", "gate_proj", "up_proj"],
                              why=f"no projection named {list(targets)} in the model's blocks")
        self._freeze_all(model)
        self.modules = []
        for name, m in found:
            ad = _HiWiAdapter(m.out_features, rank).to(m.weight.device)
            parametrize.register_parametrization(m, "weight", _OnWeight(ad))
            if m.bias is not None:
                parametrize.register_parametrization(m, "bias", _OnBias(ad))
            self.modules.append((name, m))

    def delta_parameters(self):
        out = []
        for n, m in self.modules:
            ad = m.parametrizations.weight[0].adapter
            out += [(f"{n}.A", ad.A), (f"{n}.B", ad.B)]
        return out

    def merge(self) -> nn.Module:
        """W_1', b_1' computed once and stored; the adapters are dropped."""
        for _, m in self.modules:
            if m.bias is not None and parametrize.is_parametrized(m, "bias"):
                parametrize.remove_parametrizations(m, "bias", leave_parametrized=True)
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
        self.modules = []
        return self.model
