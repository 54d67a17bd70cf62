"""NBCE: Naive Bayes-based Context Extension (Su Jianlin, 2023, the survey's post "NBCE: 使用朴素
贝叶斯扩展LLM的Context处理长度").

A long context is cut into n pieces S_1..S_n that each fit the model. Under the naive-Bayes
assumption that the pieces are independent given the continuation T,

    log p(T | S_1..S_n) = Σ_k log p(T | S_k) − (n − 1) log p(T) + const        (post, eq. 2)

which the post generalises to

    log p(T | S) = (β + 1) · pool_k log p(T | S_k) − β · log p(T)               (post, eq. 4)

with pool = the average of the log-probabilities (eq. 2 with β = n − 1) or the max-certainty
choice: the log p(T | S_k) of the context whose next-token distribution has the lowest
entropy (the post's recommended pooling, with β = 0.25). p(T) is the context-free prediction
(the question alone). As in the post's reference code, the min-entropy context is chosen at
the first generated token and kept for the rest of the answer, and a token whose context-free
log-probability is below −100 (filtered out) keeps the pooled value alone.

Decoding runs the n + 1 rows (question alone, then each context + question, left-padded) as
one batch through the model's incremental state (``tevo.inference.generate``'s machinery:
``check_prompt``, ``next_token``, ``context_window``); each step the combined distribution
picks one token, which is appended to every row.
Complexity: n + 1 model rows per step, O(Σ_k |S_k|) prefill; the KV caches of n + 1 rows.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError, InputError
from ..registry import INFERENCE
from .generate import _check, check_prompt, context_window, next_token

POOLINGS = ("min_entropy", "average")


def nbce_combine(logp: Tensor, logp_free: Tensor, beta: float | None = None,
                 pooling: str = "min_entropy", chosen: int | None = None
                 ) -> tuple[Tensor, int | None]:
    """Combine per-context next-token log-probabilities (post, eq. 4).

    logp (n, V): log p(T | S_k), normalised; logp_free (V,): log p(T). ``beta`` None: n − 1
    (the plain naive-Bayes rule, eq. 2). ``chosen``: a context index already chosen by
    min-entropy pooling (kept, as in the post's code). Returns (the combined log-probabilities
    (V,), normalised; the chosen context index or None)."""
    n = logp.shape[0]
    if n < 1:
        raise InputError("nbce needs at least one context, got zero")
    if pooling not in POOLINGS:
        raise ConfigError("nbce.pooling", pooling, POOLINGS)
    b = float(n - 1) if beta is None else float(beta)
    if pooling == "average":
        pooled = logp.mean(0)
    else:
        if chosen is None:
            entropy = -(logp.exp() * logp.clamp(-100, 0)).sum(-1)         # (n,)
            chosen = int(entropy.argmin())
        pooled = logp[chosen]
    merged = (1 + b) * pooled - b * logp_free
    merged = torch.where(logp_free > -100, merged, pooled)
    return merged.log_softmax(-1), (chosen if pooling == "min_entropy" else None)


def _check_beta(beta):
    if beta is not None and (isinstance(beta, bool) or not isinstance(beta, (int, float))
                             or beta < 0):
        raise ConfigError("nbce.beta", beta, why=f"must be a number >= 0 or None (n - 1), "
                                                 f"got {beta!r}")


def _rows(contexts, question: Tensor, pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """[question] + [context_k + question], left-padded: ids, mask (n + 1, L)."""
    seqs = [question] + [torch.cat([c.to(question.device), question]) for c in contexts]
    L = max(s.numel() for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long, device=question.device)
    mask = torch.zeros(len(seqs), L, dtype=torch.bool, device=question.device)
    for i, s in enumerate(seqs):
        ids[i, L - s.numel():] = s
        mask[i, L - s.numel():] = True
    return ids, mask


@INFERENCE.register(
    "nbce", paper="NBCE: Naive Bayes-based Context Extension (Su Jianlin, 2023; the survey's "
                  "post)",
    equation="log p(T|S) = (β+1)·pool_k log p(T|S_k) − β·log p(T); pool: min-entropy or mean; "
             "β = n−1 is naive Bayes",
    complexity=("n+1 model rows per step", "n+1 KV caches"),
    test="tests/papers/test_inference_nbce.py::test_nbce_one_context_equals_the_base_model")
@torch.no_grad()
def nbce_generate(model, contexts, question: Tensor, max_new_tokens: int = 20,
                  beta: float | None = None, pooling: str = "min_entropy",
                  temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, greedy: bool = False,
                  use_cache: bool | None = None, eos_id: int | None = None,
                  generator: torch.Generator | None = None, context="auto",
                  return_logprobs: bool = False):
    """Answer ``question`` (1-D token ids) given ``contexts`` (a list of 1-D token ids, each
    read separately) by NBCE. Returns the generated tokens (m,), and with ``return_logprobs``
    also the combined log-probabilities of each step (m, V)."""
    _check(temperature, top_k, top_p, max_new_tokens)
    _check_beta(beta)
    if pooling not in POOLINGS:
        raise ConfigError("nbce.pooling", pooling, POOLINGS)
    contexts = [torch.as_tensor(c).reshape(-1) for c in contexts]
    if not contexts:
        raise InputError("nbce needs at least one context, got zero")
    question = torch.as_tensor(question).reshape(-1)
    if question.numel() == 0:
        raise InputError("nbce needs a question of at least one token")
    ids, mask = _rows(contexts, question)
    limit, cache = check_prompt(model, ids, context, use_cache)
    longest = int(mask.sum(1).max())
    if limit is not None and longest > limit:
        raise InputError(f"a context + question has {longest} tokens, longer than the model's "
                         f"context of {limit}; cut the contexts shorter")
    R, dev = ids.shape[0], ids.device
    was_training = model.training
    model.eval()
    out_tokens, out_logp, chosen = [], [], None

    def step_logits(logits):
        nonlocal chosen
        logp = logits.float().log_softmax(-1)                         # (n+1, V)
        merged, chosen = nbce_combine(logp[1:], logp[0], beta, pooling, chosen)
        return merged
    try:
        if cache and max_new_tokens:
            w_ids, w_mask = context_window(ids, mask, limit)
            out = model(w_ids, attention_mask=w_mask, state=model.init_state(R, dev))
            state, length, logits = out.state, w_ids.shape[1], out.logits[:, -1]
        for step in range(int(max_new_tokens)):
            if not cache:
                w_ids, w_mask = context_window(ids, mask, limit)
                logits = model(w_ids, attention_mask=w_mask).logits[:, -1]
            merged = step_logits(logits)                               # (V,)
            tok = next_token(merged[None], temperature, top_k, top_p, greedy, generator)
            out_tokens.append(tok[0, 0])
            out_logp.append(merged)
            if eos_id is not None and int(tok) == eos_id:
                break
            tok = tok.expand(R, 1)
            ids = torch.cat([ids, tok], 1)
            mask = torch.cat([mask, torch.ones(R, 1, dtype=torch.bool, device=dev)], 1)
            if step == max_new_tokens - 1:
                break
            if cache:
                if limit is not None and length + 1 > limit:            # full: slide
                    w_ids, w_mask = context_window(ids, mask, limit)
                    out = model(w_ids, attention_mask=w_mask, state=model.init_state(R, dev))
                    length = w_ids.shape[1]
                else:
                    out = model(tok, state=state)
                    length += 1
                state, logits = out.state, out.logits[:, -1]
    finally:
        model.train(was_training)
    toks = torch.stack(out_tokens) if out_tokens else torch.zeros(0, dtype=torch.long,
                                                                   device=dev)
    if return_logprobs:
        V = model.cfg.vocab_size
        lp = torch.stack(out_logp) if out_logp else torch.zeros(0, V, device=dev)
        return toks, lp
    return toks
