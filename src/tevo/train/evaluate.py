"""Evaluation: an objective's metrics over a split (token-weighted, summed over DDP ranks),
with perplexity and bits per character / byte where they apply; and per-length evaluation for
length extrapolation (train at L, evaluate at 1×…16× L).

A model with an ordered segment memory (Transformer-XL's ``xl_memory``) is evaluated as in its
paper (Dai et al., 2019): the split is read in order, in contiguous lanes, segment after segment
with the memory carried (``CorpusData.ordered_eval_batches``); independent windows would start
every segment from an empty memory and measure a different model."""
from __future__ import annotations

from contextlib import nullcontext

import torch

from ..data.pipeline import batch_to
from ..errors import InputError
from ..objectives.base import MetricSums
from .distributed import any_rank
from .segments import SegmentModel, ordered_segments

EVAL_SEED = 1234          # randomness inside evaluation (MLM masks) is fixed and never
                          # touches the training generators


def _cpu_has_bf16() -> bool:
    """Native bf16 arithmetic on this CPU (AVX512-BF16 or AMX); Linux only, else False."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → bf16 where the device computes it natively (recent GPUs, CPUs with
    AVX512-BF16/AMX), else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and _cpu_has_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate(model, objective, data, split: str = "val", batch_size: int = 32,
             max_batches: int | None = None, device=None, precision: str = "fp32",
             rank: int = 0, world: int = 1, seq_len: int | None = None,
             lockstep: bool = False) -> dict:
    """Metric means over ``split`` (all of it when ``max_batches`` is None) plus derived ones
    (perplexity, bits_per_token, bits_per_char, bits_per_byte). ``lockstep``: every rank runs
    as many forwards (an FSDP forward is collective), a rank out of batches repeating one
    uncounted. A model with an ordered segment memory reads the split in order instead:
    ``batch_size`` lanes per rank, segments of ``seq_len``, ``max_batches`` segments per lane
    (all when None), the memory carried from each lane's start."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums = MetricSums()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(EVAL_SEED)
            with autocast(device, precision):
                fwd = model
                if ordered_segments(model) and hasattr(data, "ordered_eval_batches"):
                    fwd = SegmentModel(model)            # a fresh, empty memory per evaluation
                    batches = data.ordered_eval_batches(split, batch_size, max_batches, rank,
                                                        world, seq_len)
                else:
                    batches = data.eval_batches(split, batch_size, max_batches, rank, world,
                                                seq_len)
                pairs = ((b, True) for b in batches) if not lockstep else _in_lockstep(
                    batches, device, lambda: data.eval_batches(split, 1, 1, 0, 1, seq_len))
                for b, counted in pairs:
                    _, m = objective(fwd, batch_to(b, device))
                    if counted:
                        sums.add(m)
    finally:
        model.train(was_training)
    sums.all_reduce(device)
    out = sums.means()
    out.update(objective.derived(out, data.stats(split)))
    out["eval_tokens"] = int(sums.count("loss"))
    return out


def _in_lockstep(batches, device, fallback):
    """(batch, counted) pairs until every rank has run out: a rank done early repeats its last
    batch (or ``fallback()``'s first when it had none), not counted."""
    last = None
    for b in batches:
        any_rank(True, device)
        last = b
        yield b, True
    while any_rank(False, device):
        if last is None:
            last = next(iter(fallback()))
        yield last, False


def evaluate_lengths(model, objective, data, lengths, split: str = "val",
                     tokens_per_batch: int = 8192, max_batches: int | None = None,
                     device=None, precision: str = "fp32") -> list[dict]:
    """One evaluation per sequence length (for length extrapolation). A length the model
    cannot encode (past a learned position table) is reported with its error."""
    rows = []
    for n in lengths:
        n = int(n)
        if n < 2:
            raise InputError(f"evaluation length must be >= 2, got {n}")
        bs = max(1, tokens_per_batch // n)
        try:
            r = evaluate(model, objective, data, split, bs, max_batches, device, precision,
                         seq_len=n)
        except InputError as e:
            rows.append({"length": n, "error": str(e)})
            continue
        rows.append({"length": n, **r})
    return rows


@torch.no_grad()
def confusion_matrix(model, data, split: str = "test", batch_size: int = 256, device=None,
                     precision: str = "fp32"):
    """(classes × classes) counts of a classifier on a labelled split: rows are the true
    class, columns the prediction (``data.eval_batches`` yielding ``images`` and ``labels``)."""
    device = device or next(model.parameters()).device
    k = int(data.vocab_size)
    m = torch.zeros(k, k, dtype=torch.long)
    was_training = model.training
    model.eval()
    try:
        with autocast(device, precision):
            for b in data.eval_batches(split, batch_size):
                b = batch_to(b, device)
                pred = model(b["images"]).logits.argmax(-1).cpu()
                m.index_put_((b["labels"].cpu(), pred), torch.ones_like(pred), accumulate=True)
    finally:
        model.train(was_training)
    return m
