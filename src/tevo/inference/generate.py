"""Autoregressive generation from a causal language model: greedy, temperature sampling, top-k
and nucleus (top-p) filtering, with or without the model's incremental state (KV cache).

Papers: top-k sampling, Hierarchical Neural Story Generation (Fan et al., 2018);
nucleus sampling, The Curious Case of Neural Text Degeneration (Holtzman et al., 2020):
keep the smallest set of tokens whose probability mass reaches p.

Cached and uncached decoding are the same function of the prompt: the cached path prefills the
prompt once and then feeds one token a step; the uncached path re-runs the whole context each
step. The model sees at most ``context`` tokens, by default its training length
(``model.cfg.max_len``: most position encodings degrade past the length they were trained at;
a model converted from Hugging Face is limited only by a position table, as in transformers);
once the context is full the window slides (the uncached path crops to the last ``context``
tokens, the cached path re-prefills the same window), so both stay equal. A longer prompt is
cropped to its last ``context`` tokens, except that a prompt longer than a learned position
table (which cannot encode it at all) is an InputError.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError
from ..registry import INFERENCE


def context_limit(model) -> int | None:
    """The longest context the model can encode at all (a learned position table), or None."""
    lim = getattr(getattr(model, "pos", None), "max_len", None)
    return int(lim) if lim else None


def default_context(model) -> int | None:
    """The window generation uses by default: the model's training length, within its table.
    A model converted from Hugging Face (``cfg.extra.hf``) decodes as transformers does: only a
    position table limits its context (a rotary Llama's max_position_embeddings does not)."""
    cfg = getattr(model, "cfg", None)
    trained = getattr(cfg, "max_len", None)
    if "hf" in (getattr(cfg, "extra", None) or {}):
        trained = None
    lims = [v for v in (trained, context_limit(model)) if v]
    return int(min(lims)) if lims else None


def supports_cache(model) -> bool:
    """True when the model has an incremental state and every mixer has a recurrent form."""
    if not hasattr(model, "init_state"):
        return False
    for m in model.modules():
        sup = getattr(type(m), "supports", None)
        if sup is not None and hasattr(sup, "cache") and not sup.cache:
            return False
    return True


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Set to -inf every logit outside the top k and outside the nucleus of mass p."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(int(top_k), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, idx = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked before it already hold mass >= p
        drop = (probs.cumsum(-1) - probs) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    return logits


def next_token(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, greedy: bool = False,
               generator: torch.Generator | None = None) -> Tensor:
    """(B, V) logits → (B, 1) token ids."""
    logits = logits.float()
    if greedy or temperature == 0:
        return logits.argmax(-1, keepdim=True)
    probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
    if generator is not None and generator.device != probs.device:
        return torch.multinomial(probs.cpu(), 1, generator=generator).to(probs.device)
    return torch.multinomial(probs, 1, generator=generator)


def _check(temperature, top_k, top_p, max_new_tokens):
    if temperature < 0:
        raise InputError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and int(top_k) < 1:
        raise InputError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < float(top_p) <= 1.0:
        raise InputError(f"top_p must be in (0, 1], got {top_p}")
    if int(max_new_tokens) < 0:
        raise InputError(f"max_new_tokens must be >= 0, got {max_new_tokens}")


def check_prompt(model, input_ids: Tensor, context="auto",
                 use_cache: bool | None = None) -> tuple[int | None, bool]:
    """Check that ``model`` is a causal LM and ``input_ids`` (B, n) a prompt it can encode;
    returns (the context window, whether to use the incremental state)."""
    if getattr(type(model), "has_decoder", False) or not getattr(model, "causal", False):
        raise InputError(f"generate needs a causal language model, not {type(model).__name__}")
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise InputError("the prompt is empty: generate needs at least one token")
    n0 = input_ids.shape[1]
    table = context_limit(model)
    if table is not None and n0 > table:
        raise InputError(f"the prompt has {n0} tokens, longer than the model's context of "
                         f"{table} (its learned position table); shorten the prompt")
    limit = default_context(model) if context == "auto" else context
    if limit is not None and (int(limit) < 1 or (table is not None and int(limit) > table)):
        raise InputError(f"context must be in [1, {table or 'inf'}], got {limit}")
    cache = supports_cache(model) if use_cache is None else bool(use_cache)
    if cache and not supports_cache(model):
        raise InputError("this model has a mixer without an incremental form; use "
                         "use_cache=False")
    return limit, cache


def context_window(ids: Tensor, mask: Tensor | None, limit: int | None):
    """The last ``limit`` tokens (and their mask) the model sees; all of them when None."""
    if limit is None or ids.shape[1] <= limit:
        return ids, mask
    return ids[:, -limit:], None if mask is None else mask[:, -limit:]


@INFERENCE.register(
    "generate", paper="GPT-2 (Radford et al., 2019) decoding; top-k: Fan et al., 2018; "
                      "nucleus: Holtzman et al., 2020",
    equation="x_{t+1} ~ softmax(filter_{k,p}(logits_t / T)); greedy: argmax; KV-cached",
    complexity=("O(n) model steps (cached: one token each)", "cache: mixer state"),
    test="tests/test_generate.py::test_cached_and_uncached_greedy_give_the_same_tokens")
@torch.no_grad()
def generate(model, input_ids: Tensor, max_new_tokens: int = 100, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, greedy: bool = False,
             use_cache: bool | None = None, eos_id: int | None = None,
             attention_mask: Tensor | None = None,
             generator: torch.Generator | None = None, context="auto") -> Tensor:
    """Continue ``input_ids`` (B, n) by up to ``max_new_tokens``; returns (B, n + new).

    ``attention_mask`` (B, n) marks real prompt tokens (left padding for prompts of different
    lengths). ``use_cache=None`` uses the KV cache when the model has one. Rows that produced
    ``eos_id`` keep producing it; generation stops when every row has. ``context``: the most
    tokens the model sees ("auto": its training length; None: no limit, e.g. to study length
    extrapolation)."""
    _check(temperature, top_k, top_p, max_new_tokens)
    limit, cache = check_prompt(model, input_ids, context, use_cache)
    B = input_ids.shape[0]
    was_training = model.training
    model.eval()
    dev = input_ids.device
    ids = input_ids
    mask = None if attention_mask is None else attention_mask.bool().to(dev)
    done = torch.zeros(B, dtype=torch.bool, device=dev)

    def window():
        return context_window(ids, mask, limit)
    try:
        if cache and max_new_tokens:
            w_ids, w_mask = window()
            out = model(w_ids, attention_mask=w_mask, state=model.init_state(B, dev))
            state, length = out.state, w_ids.shape[1]
            logits = out.logits[:, -1]
        for step in range(int(max_new_tokens)):
            if not cache:
                w_ids, w_mask = window()
                logits = model(w_ids, attention_mask=w_mask).logits[:, -1]
            tok = next_token(logits, temperature, top_k, top_p, greedy, generator)   # (B, 1)
            if eos_id is not None:
                tok = torch.where(done[:, None], torch.full_like(tok, eos_id), tok)
                done |= tok[:, 0] == eos_id
            ids = torch.cat([ids, tok], 1)
            if mask is not None:
                mask = torch.cat([mask, torch.ones(B, 1, dtype=torch.bool, device=dev)], 1)
            if step == max_new_tokens - 1 or (eos_id is not None and bool(done.all())):
                break
            if cache:
                if limit is not None and length + 1 > limit:      # full: slide the window
                    w_ids, w_mask = window()
                    out = model(w_ids, attention_mask=w_mask, state=model.init_state(B, dev))
                    length = w_ids.shape[1]
                else:
                    out = model(tok, state=state)
                    length += 1
                state, logits = out.state, out.logits[:, -1]
    finally:
        model.train(was_training)
    return ids
