"""Training and evaluating a model with a segment memory that needs its segments in order
(``model.memory`` whose class sets ``ordered_segments = True``: Transformer-XL's ``xl_memory``).

Paper: Transformer-XL: Attentive Language Models Beyond a Fixed-Length Context (Dai et al.,
2019), §3.2 and its training setup: the corpus is read in order, each batch row a contiguous
lane of it, and the memory computed for segment τ (stop-gradient, SG(m_τ)) is reused for
segment τ+1 at the *next training step*, so the model learns to use context its gradient never
reaches. Evaluation reads the split the same way, with the memory carried from each lane's start.

How the trainer does it (``tevo.train.trainer``):
- data: ``DataModule.read_in_order(batch_size)`` makes ``train_batch`` return the next segment of
  every lane (``tevo.data.stream.LaneReader``); DDP rank r and micro-batch k take their own
  lanes, rows [(r·grad_accum + k)·micro, … + micro) of the global batch, as for random windows;
- model: ``SegmentModel`` makes ``forward_segment`` the module's ``forward`` and keeps the
  memory between calls, so the objective (``clm``) computes its loss on the returned logits
  unchanged, and DDP's forward hooks (gradient synchronisation) see an ordinary forward;
- each micro-batch keeps its own memory slice; the checkpoint holds all lanes' memories
  (``concat_memory`` over micro-batches and ranks) next to the lane offset, so a resumed run
  continues bit for bit.
FSDP is refused: its root unit gathers parameters around ``forward`` only.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError


def ordered_segments(model: nn.Module) -> bool:
    """Whether ``model`` has a segment memory that must see its segments in order."""
    mem = getattr(model, "memory", None)
    return mem is not None and bool(getattr(type(mem), "ordered_segments", False))


class SegmentModel(nn.Module):
    """``model.forward_segment`` as ``forward``, carrying the memory from call to call:
    ``out = seg(input_ids)`` runs one segment with ``seg.memory`` and stores ``out.state`` there.
    The memory module detaches what it stores (stop-gradient), so nothing in ``seg.memory``
    holds a graph across calls. Parameters are the wrapped model's own."""

    def __init__(self, model: nn.Module, memory=None):
        super().__init__()
        self.model = model
        self.memory = memory

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None):
        out = self.model.forward_segment(input_ids, self.memory, attention_mask)
        self.memory = out.state
        return out


def check_segment_training(model: nn.Module, fsdp: bool) -> None:
    """One-line errors for what ordered segment training cannot do."""
    if fsdp:
        raise ConfigError("train.distributed", "fsdp", ["ddp"],
                          why="a segment memory (model.memory) is trained through "
                              "forward_segment, which FSDP's root unit does not wrap")
    from ..positions.base import PositionEncoding
    if not getattr(type(model.memory), "stream_positions", True):
        return                         # positions restart every segment (rmt): no table grows
    for m in model.modules():
        if isinstance(m, PositionEncoding) and getattr(m, "max_len", None) is not None:
            raise ConfigError("model.position", type(m).__name__,
                              why=f"a segment memory trained on a stream read in order sees "
                                  f"positions grow past any table (here max_len={m.max_len}); "
                                  f"use a relative encoding (xl_relative, rope, alibi, ...), "
                                  f"as Transformer-XL does (§3.3)")


# -- memories as trees of batch-first tensors ---------------------------------------------------
def _map(tree, fn):
    if isinstance(tree, Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: _map(v, fn) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_map(v, fn) for v in tree)
    return tree


def slice_memory(memory, start: int, stop: int):
    """Rows (lanes) [start, stop) of every tensor of a memory (None stays None)."""
    return _map(memory, lambda t: t[start:stop])


def memory_to(memory, device):
    return _map(memory, lambda t: t.to(device))


def concat_memory(memories: list):
    """The memories of consecutive lane blocks as one memory (None if any block has none: no
    segment was read yet). Tensors are concatenated along the batch dimension; entries that are
    None in every block (e.g. no padding mask) stay None."""
    if not memories or any(m is None for m in memories):
        return None
    first = memories[0]
    if isinstance(first, Tensor):
        return torch.cat(memories, 0)
    if isinstance(first, dict):
        return {k: concat_memory([m[k] for m in memories]) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(concat_memory(list(ms)) for ms in zip(*memories))
    return first
