"""T5 span corruption: drop random spans of the input, each replaced by one sentinel; the
decoder reconstructs the dropped spans, each after its sentinel.

Paper: Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer
(Raffel et al., 2020), §3.1.4 and §3.3.4 (also LongT5's pre-training, Guo et al., 2022):
noise density r = 0.15, mean noise-span length μ = 3. For a window of L tokens,
    noise = round(r L),  spans = round(noise / μ),
    inputs  = (L − noise) kept tokens + one sentinel per span + [EOS]  → L − noise + spans + 1,
    targets = per span: its sentinel, then its tokens, + [EOS]         → noise + spans + 1.
The span lengths are T5's ``random_spans_noise_mask``: the noise tokens and the kept tokens are
each cut into ``spans`` non-empty segments at uniformly random cut points, interleaved
kept, noise, kept, noise, … (so a window never starts with noise). ``input_and_target_lengths``
is T5's ``compute_input_and_target_lengths``: the raw window that corrupts to a given input
length (512 → 568 raw tokens, 114 target tokens). Sentinel i is the special token
``<extra_id_i>``; the decoder reads ``[BOS] targets[:-1]``. Loss: CE over the target tokens,
no label smoothing (T5's pre-training).

Complexity: O(L) corruption per window; the encoder-decoder's cost on (L − noise + spans + 1)
inputs and (noise + spans + 1) targets, ≈ 0.89 L and 0.21 L at r = 0.15, μ = 3.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..registry import OBJECTIVES
from .base import IGNORE, Objective, aux_of, exact_sum, token_metrics


def corrupted_lengths(length: int, noise_density: float = 0.15, mean_span: float = 3.0
                      ) -> tuple[int, int]:
    """(inputs, targets) lengths of a corrupted window of ``length`` raw tokens (T5's
    ``_tokens_length_to_inputs_length_targets_length``, EOS included)."""
    noise = int(round(length * noise_density))
    spans = int(round(noise / mean_span))
    return length - noise + spans + 1, noise + spans + 1


def input_and_target_lengths(inputs_length: int, noise_density: float = 0.15,
                             mean_span: float = 3.0) -> tuple[int, int]:
    """(raw tokens, targets) for an encoder input of ``inputs_length`` tokens: the longest raw
    window whose corruption fits (T5's ``compute_input_and_target_lengths``)."""
    tokens = inputs_length
    while corrupted_lengths(tokens + 1, noise_density, mean_span)[0] <= inputs_length:
        tokens += 1
    _, targets = corrupted_lengths(tokens, noise_density, mean_span)
    if noise_density == 0.5 and targets > inputs_length:      # T5's round-number adjustment
        tokens, targets = tokens - 1, targets - 1
    return tokens, targets


def _random_segmentation(num_items: int, num_segments: int, gen) -> Tensor:
    """Lengths of ``num_segments`` non-empty segments of ``num_items`` items, cut at uniformly
    random points (T5: shuffle num_segments − 1 ones among num_items − 1 slots)."""
    cut = torch.zeros(num_items - 1, dtype=torch.long)
    cut[:num_segments - 1] = 1
    cut = cut[torch.randperm(num_items - 1, generator=gen)]
    seg = torch.cat([torch.zeros(1, dtype=torch.long), cut]).cumsum(0)   # segment id per item
    return torch.bincount(seg, minlength=num_segments)


def random_spans_noise_mask(length: int, noise_density: float = 0.15, mean_span: float = 3.0,
                            generator=None) -> Tensor:
    """(length,) bool, True = noise: T5's ``random_spans_noise_mask``."""
    L = max(length, 2)
    noise = min(max(int(round(L * noise_density)), 1), L - 1)
    spans = max(int(round(noise / mean_span)), 1)
    noise_len = _random_segmentation(noise, spans, generator)
    keep_len = _random_segmentation(L - noise, spans, generator)
    lengths = torch.stack([keep_len, noise_len], 1).flatten()           # keep, noise, keep, …
    is_noise = torch.arange(2 * spans).remainder(2).bool()
    return is_noise.repeat_interleave(lengths)[:length]


def corrupt(ids: Tensor, noise: Tensor, sentinels: list[int], eos: int) -> tuple[Tensor, Tensor]:
    """(inputs, targets) of one window ``ids`` (L,) under the noise mask (L,) bool."""
    starts = noise & ~F.pad(noise, (1, 0))[:-1]                 # first token of each noise span
    keep_starts = ~noise & F.pad(noise, (1, 0), value=True)[:-1]
    span_id = starts.long().cumsum(0) - 1                        # span of each noise token
    keep_span = keep_starts.long().cumsum(0) - 1
    sent = torch.tensor(sentinels, dtype=ids.dtype)
    eos_t = torch.tensor([eos], dtype=ids.dtype)
    # inputs: noise spans collapse to their sentinel; targets: kept spans collapse to the
    # sentinel of the noise span that follows them (T5's nonnoise_span_to_unique_sentinel)
    inp = torch.where(starts, sent[span_id.clamp(min=0)], ids)[~noise | starts]
    tgt = torch.where(keep_starts, sent[keep_span.clamp(min=0)], ids)[noise | keep_starts]
    if not bool(noise[-1]):                 # a trailing kept span has no noise span after it
        tgt = tgt[:-1]
    return torch.cat([inp, eos_t]), torch.cat([tgt, eos_t])


@OBJECTIVES.register(
    "span", paper="Exploring the Limits of Transfer Learning with a Unified Text-to-Text "
                  "Transformer (Raffel et al., 2020); LongT5 (Guo et al., 2022)",
    equation="§3.1.4: noise = round(0.15 L), spans = round(noise/3); inputs = L - noise + spans "
             "+ 1, targets = noise + spans + 1; CE on targets",
    complexity=("O(L) corruption + model", "O(L)"),
    test="tests/papers/test_objectives_pretrain.py::"
         "test_span_corruption_lengths_match_t5_formula")
class SpanCorruption(Objective):
    """T5 span corruption (density 0.15, mean span 3, sentinels) for encoder–decoder models."""

    data_format = "mlm"                   # raw windows; the corruption happens here

    def __init__(self, noise_density: float = 0.15, mean_span: float = 3.0,
                 sentinels: int = 100):
        if not 0.0 < float(noise_density) < 1.0:
            raise ConfigError("objective.noise_density", noise_density, why="must be in (0, 1)")
        if not float(mean_span) >= 1.0:
            raise ConfigError("objective.mean_span", mean_span, why="must be >= 1")
        if not isinstance(sentinels, int) or isinstance(sentinels, bool) or sentinels < 1:
            raise ConfigError("objective.sentinels", sentinels, why="must be an integer >= 1")
        self.noise_density, self.mean_span = float(noise_density), float(mean_span)
        self.n_sentinels = int(sentinels)
        self.specials = ("[BOS]", "[EOS]") + tuple(f"<extra_id_{i}>" for i in range(sentinels))

    def check_model(self, model) -> None:
        if not getattr(type(model), "has_decoder", False):
            raise ConfigError("objective", "span",
                              why=f"span corruption needs an encoder-decoder model (model.arch="
                                  f"transformer); this one is {type(model).__name__}")

    def make_batch(self, ids: Tensor, generator=None) -> dict:
        """{"src_ids", "tgt_ids" ([BOS] targets)} for windows ids (B, L)."""
        B, L = ids.shape
        _, n_tgt = corrupted_lengths(L, self.noise_density, self.mean_span)
        spans = max(int(round(max(int(round(L * self.noise_density)), 1) / self.mean_span)), 1)
        if spans > self.n_sentinels:
            raise ConfigError("objective.sentinels", self.n_sentinels,
                              why=f"a window of {L} tokens has {spans} noise spans; set "
                                  f"objective.sentinels>={spans} or lower data.seq_len")
        sent = [self.special_ids[f"<extra_id_{i}>"] for i in range(self.n_sentinels)]
        eos, bos = self.special_ids["[EOS]"], self.special_ids["[BOS]"]
        src, tgt = [], []
        cpu = ids.cpu()
        for b in range(B):
            noise = random_spans_noise_mask(L, self.noise_density, self.mean_span, generator)
            i, t = corrupt(cpu[b], noise, sent, eos)
            src.append(i)
            tgt.append(torch.cat([torch.tensor([bos]), t]))
        return {"src_ids": torch.stack(src).to(ids.device),
                "tgt_ids": torch.stack(tgt).to(ids.device)}

    def __call__(self, model, batch):
        b = self.make_batch(batch["input_ids"])
        tgt = b["tgt_ids"]
        out = model(b["src_ids"], tgt[:, :-1])
        labels = tgt[:, 1:]
        logits = out.logits.float()
        ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                             reduction="none")
        metrics = token_metrics(logits, labels, exact_sum(ce), exact=False)
        aux = aux_of(out)
        loss = ce.sum() / metrics["loss"][1].clamp(min=1) + aux
        metrics["aux"] = (aux.detach(), 1)
        return loss, metrics
