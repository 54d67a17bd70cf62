"""Beam search for decoder-only language models, on the model's incremental state (KV cache).

Beam search keeps the ``k`` best partial continuations by total log-probability and extends
each by every token at every step (Lowerre, The Harpy Speech Recognition System, 1976; for
neural sequence models, Sutskever et al., Sequence to Sequence Learning with Neural Networks,
2014). A hypothesis that ends in ``eos_id`` (or reaches ``max_new_tokens``) is finished and
scored with a length penalty,

    score(y) = Σ_t log p(y_t | x, y_<t) / |y|^α        (|y|: generated tokens, eos included)

the normalisation of Hugging Face transformers' ``generate(num_beams=k, do_sample=False)``
(a simpler form of GNMT's ((5 + |y|) / 6)^α, Wu et al., 2016; older transformers versions
counted the prompt in |y| too). The rules are those of transformers' vectorised
``_beam_search``, so the same model gives the same tokens and scores:

- each step takes the 2k best of the k·V candidates (so k of them can continue even when
  every one of the k best ended in eos); the k best that did not end continue;
- of the k best candidates, those that ended join the finished set, which keeps its k best;
- ``early_stopping``: True stops a row once k hypotheses are finished; False stops it when
  the best running beam, normalised by its current length, cannot beat the worst finished
  one; "never" normalises by ``max_new_tokens`` instead when α > 0 (the exact bound).

The prompt is prefilled once for the B rows; the state is then copied to B·k beams and, each
step, gathered by the beams that were kept (:func:`reorder_state`), so one decoding step is one
model call on B·k single tokens.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..errors import InputError
from ..registry import INFERENCE
from .generate import check_prompt, context_window

NEG = -1.0e9      # "impossible": finite (as in transformers), so sums and divisions stay ordered


class BeamSearchOutput(NamedTuple):
    sequences: Tensor       # (B, n + L): the prompt and the best hypothesis, padded with eos
    scores: Tensor          # (B,): its length-penalised log-probability


def reorder_state(state, index: Tensor, batch: int | None = None, _path: str = "state"):
    """Select rows ``index`` (m,) of a decoding state: every tensor in it (nested dicts, lists,
    tuples) is index-selected along dim 0, its batch dimension; ints, floats, strings and None
    (lengths, absent masks) are shared by all rows and kept. With ``batch``, a tensor whose
    first dimension is not ``batch`` is an error naming where it sits in the state (a state
    that cannot be reordered row by row must not be reordered silently)."""
    if isinstance(state, Tensor):
        if state.dim() == 0 or (batch is not None and state.shape[0] != batch):
            raise InputError(f"cannot reorder {_path} of shape {tuple(state.shape)} along a "
                             f"batch of {batch}: its first dimension is not the batch")
        return state.index_select(0, index.to(state.device))
    if isinstance(state, dict):
        return {key: reorder_state(v, index, batch, f"{_path}[{key!r}]")
                for key, v in state.items()}
    if isinstance(state, (list, tuple)):
        out = [reorder_state(v, index, batch, f"{_path}[{i}]") for i, v in enumerate(state)]
        return out if isinstance(state, list) else type(state)(out)
    if state is None or isinstance(state, (bool, int, float, str)):
        return state
    raise InputError(f"cannot reorder {_path} of type {type(state).__name__}: a decoding state "
                     f"must hold tensors with the batch first (or plain numbers)")


@INFERENCE.register(
    "beam_search",
    paper="Beam search (Lowerre, 1976; Sutskever et al., 2014); length penalty |y|^α as in "
          "Hugging Face transformers (cf. GNMT, Wu et al., 2016)",
    equation="keep the k best prefixes by Σ log p; finished: Σ log p / |y|^α; KV cache "
             "gathered by the kept beams",
    complexity=("O(n) model calls on B·k tokens each", "k × the cache of one sequence"),
    test="tests/test_beam.py::test_exhaustive_width_finds_the_most_likely_continuation")
@torch.no_grad()
def beam_search(model, input_ids: Tensor, num_beams: int = 4, max_new_tokens: int = 100,
                eos_id: int | None = None, length_penalty: float = 1.0,
                early_stopping: bool | str = False, attention_mask: Tensor | None = None,
                use_cache: bool | None = None, context="auto") -> BeamSearchOutput:
    """The best continuation of each prompt in ``input_ids`` (B, n) under beam search with
    ``num_beams`` beams; returns ``(sequences (B, n + L), scores (B,))``.

    Continuations are at most ``max_new_tokens`` long and end at ``eos_id``; shorter ones are
    padded with ``eos_id`` (as :func:`~tevo.inference.generate.generate` pads stopped rows).
    ``attention_mask`` (B, n) marks real prompt tokens (left padding); ``use_cache`` and
    ``context`` are as in ``generate``. ``num_beams=1`` is greedy decoding."""
    k = int(num_beams)
    if k < 1:
        raise InputError(f"num_beams must be >= 1, got {num_beams}")
    if int(max_new_tokens) < 0:
        raise InputError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if early_stopping not in (True, False, "never"):
        raise InputError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    limit, cache = check_prompt(model, input_ids, context, use_cache)
    B, n0 = input_ids.shape
    T = int(max_new_tokens)
    dev = input_ids.device
    if T == 0:
        return BeamSearchOutput(input_ids.clone(), torch.zeros(B, device=dev))
    mask = None if attention_mask is None else attention_mask.bool().to(dev)
    pad = 0 if eos_id is None else int(eos_id)

    def window(ids, mask):
        return context_window(ids, mask, limit)

    was_training = model.training
    model.eval()
    try:
        # prefill the B prompts once, then give each row's k beams a copy of its state
        w_ids, w_mask = window(input_ids, mask)
        out = model(w_ids, attention_mask=w_mask,
                    state=model.init_state(B, dev) if cache else None)
        expand = torch.arange(B, device=dev).repeat_interleave(k)            # (B·k,)
        logits = out.logits[:, -1].float()[expand]                            # (B·k, V)
        state = reorder_state(out.state, expand, B) if cache else None
        length = w_ids.shape[1]
        ids = input_ids[expand]                                               # (B·k, n)
        mask = None if mask is None else mask[expand]
        V = logits.shape[-1]
        K = min(2 * k, k * V)
        rows = torch.arange(B, device=dev)[:, None]                           # (B, 1)
        in_top_k = torch.arange(K, device=dev) < k                            # (K,)
        # running beams; only beam 0 is live at first (the k copies are the same prefix)
        run_scores = torch.zeros(B, k, device=dev)
        run_scores[:, 1:] = NEG
        run_tokens = torch.full((B, k, T), pad, dtype=torch.long, device=dev)
        # finished hypotheses, best first
        fin_scores = torch.full((B, k), NEG, device=dev)
        fin_tokens = run_tokens.clone()
        fin_len = torch.zeros(B, k, dtype=torch.long, device=dev)
        fin_done = torch.zeros(B, k, dtype=torch.bool, device=dev)
        can_improve = torch.ones(B, dtype=torch.bool, device=dev)
        for t in range(1, T + 1):
            logp = logits.log_softmax(-1).view(B, k, V) + run_scores[..., None]
            top, flat = logp.view(B, k * V).topk(K)                           # (B, K)
            parent, tok = flat // V, flat % V
            cand = run_tokens[rows, parent]                                   # (B, K, T)
            cand[:, :, t - 1] = tok
            stop = tok == eos_id if eos_id is not None else torch.zeros_like(tok, dtype=torch.bool)
            if t == T:                                      # max length: every candidate ends
                stop = torch.ones_like(stop)
            # the k best candidates that did not stop continue
            live = top + stop.float() * NEG
            keep = live.topk(k).indices                                       # (B, k)
            run_scores = live.gather(1, keep)
            run_tokens = cand[rows, keep]
            parent = parent.gather(1, keep)
            # the stopped ones among the k best join the finished set, which keeps its k best
            new = stop & in_top_k
            closed = ~can_improve | (fin_done.all(1) & (early_stopping is True))
            s = top / t ** length_penalty + closed[:, None].float() * NEG + (~new).float() * NEG
            best = torch.cat([fin_scores, s], 1).topk(k).indices              # (B, k)
            fin_scores = torch.cat([fin_scores, s], 1).gather(1, best)
            fin_tokens = torch.cat([fin_tokens, cand], 1)[rows, best]
            fin_len = torch.cat([fin_len, torch.full_like(tok, t)], 1).gather(1, best)
            fin_done = torch.cat([fin_done, new], 1).gather(1, best)
            # can the best running beam still beat the worst finished one?
            L = T if early_stopping == "never" and length_penalty > 0 else t
            bound = run_scores[:, :1] / L ** length_penalty                   # (B, 1)
            worst = torch.where(fin_done, fin_scores.min(1, keepdim=True).values, NEG)
            can_improve &= (bound > worst).any(1)
            if (t == T or not bool(can_improve.any()) or bool(stop.all())
                    or (early_stopping is True and bool(fin_done.all()))):
                break
            # next step: gather the kept beams' state, feed each its new token
            sel = (parent + rows * k).reshape(-1)                             # (B·k,)
            nxt = run_tokens[:, :, t - 1].reshape(-1, 1)                      # (B·k, 1)
            ids = torch.cat([ids[sel], nxt], 1)
            if mask is not None:
                mask = torch.cat([mask[sel], torch.ones_like(nxt, dtype=torch.bool)], 1)
            if not cache:
                w_ids, w_mask = window(ids, mask)
                logits = model(w_ids, attention_mask=w_mask).logits[:, -1].float()
                continue
            if limit is not None and length + 1 > limit:          # full: slide the window
                w_ids, w_mask = window(ids, mask)
                out = model(w_ids, attention_mask=w_mask, state=model.init_state(B * k, dev))
                length = w_ids.shape[1]
            else:
                out = model(nxt, state=reorder_state(state, sel, B * k))
                length += 1
            state, logits = out.state, out.logits[:, -1].float()
    finally:
        model.train(was_training)
    n_new = int(fin_len[:, 0].max())
    return BeamSearchOutput(torch.cat([input_ids, fin_tokens[:, 0, :n_new]], 1), fin_scores[:, 0])
