"""Context extension by reading pieces of the context in parallel: Parallel Context Windows and
Structured Prompting.

PCW, Parallel Context Windows for Large Language Models (Ratner et al., ACL 2023), §2: the
context is cut into k windows W_1..W_k that are run as one sequence whose attention mask
keeps each window to itself (block-diagonal causal attention) and whose position ids restart
in every window (0..|W_i|−1, windows left-aligned), so no window is longer than the model was
trained on; the task tokens that follow take positions N, N+1, ... (N = max_i |W_i|) and
attend to every window and to the task tokens before them:

    mask(i, j) = causal(i, j) ∧ (window(i) = window(j) ∨ i is a task token)

Structured Prompting: Scaling In-Context Learning to 1,000 Examples (Hao et al., 2022), §2.2:
the M demonstration groups are encoded the same way (each group alone; groups right-aligned
so that they all end at position N − 1), and the test input attends to all of them with
rescaled attention, the exp-scores of the group tokens scaled by 1/M:

    Attn(q, ·) = [Σ_{j ∈ groups} e^{q·k_j}/M · v_j + Σ_{j ∈ test} e^{q·k_j} v_j] / (the same
                 sum of the weights)

which is the additive score term −log M on every group key (for the group tokens themselves
it shifts a whole row, which softmax ignores). M copies of one group therefore give the test
input exactly the attention one group gives.

Both decode on the model's incremental state: the windows/groups and task tokens are prefilled
in one call (``positions`` and ``attn_mask`` of ``LanguageModel.forward``); each new token then
attends to everything. They need self-mixers that honour ``MixerContext.attn_mask``
(``takes_attn_mask``: the softmax family) and a position encoding driven by position ids
(``input``, ``qk``, ``bias`` or ``value`` hooks); any other is a one-line ConfigError.
Structured Prompting's rescale reaches the scores through the position encoding's ``bias`` hook
(a wrapper installed for the call: the base encoding's own hooks still apply).
Complexity: prefill O((Σ|W_i| + m)²) with the mask (the paper's O(Σ|W_i|²/k) needs a block
kernel); each decode step attends to all cached keys; cache: Σ|W_i| + m keys per layer.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import Tensor

from ..errors import ConfigError, InputError
from ..registry import INFERENCE
from .generate import _check, check_prompt, next_token

_ID_HOOKS = frozenset({"input", "qk", "bias", "value"})


def check_parallel_model(model, name: str) -> None:
    """ConfigError unless every self-mixer honours ``attn_mask`` and the position encoding is
    driven by position ids."""
    bad = sorted({getattr(type(m), "registry_name", type(m).__name__)
                  for m in model.modules()
                  if any(c.__name__ == "Mixer" for c in type(m).__mro__)
                  and not getattr(m, "cross", False)
                  and not getattr(m, "takes_attn_mask", False)})
    if bad:
        raise ConfigError("model.mixer", bad[0], ["softmax", "mqa", "gqa"],
                          why=f"{name} masks attention between windows, which mixer {bad[0]!r} "
                              f"cannot take (it needs a mixer honouring attn_mask)")
    pos = getattr(model, "pos", None)
    hooks = frozenset(getattr(pos, "hooks", ()))
    if hooks - _ID_HOOKS or getattr(type(pos), "registry_name", "") == "randomized":
        raise ConfigError("model.position", getattr(type(pos), "registry_name",
                                                    type(pos).__name__),
                          why=f"{name} shares position ids between windows; this encoding is "
                              f"not driven by position ids")


def parallel_layout(windows, task: Tensor, align: str = "left"):
    """One sequence of k windows then the task tokens.

    Returns ids (1, n), positions (1, n), attn_mask (1, n, n) (True = may attend; causality
    is ANDed by the model), n_windows_tokens (Σ|W_i|), N (the task's first position)."""
    lens = [w.numel() for w in windows]
    N = max(lens)
    ids = torch.cat(list(windows) + [task])[None]
    dev = ids.device
    pos, owner = [], []
    for i, w in enumerate(windows):
        start = 0 if align == "left" else N - w.numel()
        pos.append(torch.arange(start, start + w.numel(), device=dev))
        owner.append(torch.full((w.numel(),), i, device=dev))
    m = task.numel()
    pos.append(torch.arange(N, N + m, device=dev))
    owner.append(torch.full((m,), -1, device=dev))
    pos, owner = torch.cat(pos)[None], torch.cat(owner)
    is_task = owner < 0
    mask = (owner[:, None] == owner[None, :]) | is_task[:, None]           # (n, n)
    return ids, pos, mask[None], int(sum(lens)), N


class _GroupRescale(torch.nn.Module):
    """The model's position encoding plus Structured Prompting's −log M on the first
    ``n_group`` keys (the demonstration groups)."""

    def __init__(self, base, n_group: int, M: int):
        super().__init__()
        object.__setattr__(self, "base", base)            # not a submodule: nothing to copy
        self.n_group, self.M, self.log_m = n_group, M, math.log(M)
        self.hooks = frozenset(getattr(base, "hooks", ())) | {"bias"}

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "base"), name)

    def embed(self, x, positions):
        return self.base.embed(x, positions)

    def rotate(self, q, k, q_pos, k_pos):
        return self.base.rotate(q, k, q_pos, k_pos)

    def values(self, weights, q_pos, k_pos):
        return self.base.values(weights, q_pos, k_pos)

    def for_layer(self, layer):
        base = self.base.for_layer(layer) if hasattr(self.base, "for_layer") else self.base
        return self if base is self.base else _GroupRescale(base, self.n_group, self.M)

    def bias(self, q, k, q_pos, k_pos):
        n_q, n_k = q.shape[2], k.shape[2]
        b = torch.zeros(1, 1, n_q, n_k, device=q.device)
        b[..., :min(self.n_group, n_k)] = -self.log_m                    # e^s / M
        if "bias" in self.base.hooks:
            extra = self.base.bias(q, k, q_pos, k_pos)
            if extra is not None:
                b = b + extra.float()
        return b


@contextmanager
def _rescaled(model, n_group: int, M: int):
    old = model._modules.get("pos")
    model._modules["pos"] = _GroupRescale(old, n_group, M)
    try:
        yield
    finally:
        model._modules["pos"] = old


def _parallel_generate(model, name, windows, task, max_new_tokens, align, rescale,
                       temperature, top_k, top_p, greedy, use_cache, eos_id, generator,
                       return_logits):
    _check(temperature, top_k, top_p, max_new_tokens)
    windows = [torch.as_tensor(w).reshape(-1) for w in windows]
    if not windows:
        raise InputError(f"{name} needs at least one window, got zero")
    if any(w.numel() == 0 for w in windows):
        raise InputError(f"{name}: a window is empty")
    task = torch.as_tensor(task).reshape(-1)
    if task.numel() == 0:
        raise InputError(f"{name} needs at least one task token")
    check_parallel_model(model, name)
    ids, pos, amask, n_win, N = parallel_layout(windows, task, align)
    _, cache = check_prompt(model, ids[:, :1], None, use_cache)
    from .generate import default_context
    limit = default_context(model)
    longest = max(w.numel() for w in windows)
    if limit is not None and longest > limit:
        raise InputError(f"{name}: a window has {longest} tokens, longer than the model's "
                         f"context of {limit}")
    last = N + task.numel() + int(max_new_tokens) - 1
    if limit is not None and last + 1 > limit:
        raise InputError(f"{name}: the task tokens and {max_new_tokens} new tokens reach "
                         f"position {last}, past the model's context of {limit}; shorten them")
    M = len(windows)
    was_training = model.training
    model.eval()
    dev = ids.device
    gen, logits_out = [], []
    scope = _rescaled(model, n_win, M) if rescale else _nullscope()
    try:
        with torch.no_grad(), scope:
            if cache:
                out = model(ids, positions=pos, attn_mask=amask,
                            state=model.init_state(1, dev))
                state, logits = out.state, out.logits[:, -1]
            for step in range(int(max_new_tokens)):
                if not cache:
                    logits = model(ids, positions=pos, attn_mask=amask).logits[:, -1]
                logits_out.append(logits[0].float())
                tok = next_token(logits, temperature, top_k, top_p, greedy, generator)
                gen.append(tok[0, 0])
                if (eos_id is not None and int(tok) == eos_id) or step == max_new_tokens - 1:
                    break
                p = pos[:, -1:] + 1
                ids, pos = torch.cat([ids, tok], 1), torch.cat([pos, p], 1)
                n = ids.shape[1]
                amask = torch.cat([torch.cat([amask, torch.zeros(1, n - 1, 1, dtype=torch.bool,
                                                                  device=dev)], 2),
                                   torch.ones(1, 1, n, dtype=torch.bool, device=dev)], 1)
                if cache:
                    out = model(tok, positions=p, state=state)
                    state, logits = out.state, out.logits[:, -1]
    finally:
        model.train(was_training)
    toks = torch.stack(gen) if gen else torch.zeros(0, dtype=torch.long, device=dev)
    if return_logits:
        V = model.cfg.vocab_size
        return toks, (torch.stack(logits_out) if logits_out else torch.zeros(0, V))
    return toks


@contextmanager
def _nullscope():
    yield


@INFERENCE.register(
    "pcw", paper="Parallel Context Windows for Large Language Models (Ratner et al., ACL 2023)",
    equation="§2: windows share position ids 0..|W|−1; mask(i,j) = causal ∧ (same window ∨ i "
             "is a task token); task tokens from position max|W|",
    complexity=("prefill O((Σ|W_i| + m)²), decode O(Σ|W_i| + m) per token",
                "KV cache of Σ|W_i| + m keys"),
    test="tests/papers/test_inference_parallel_context.py::test_pcw_windows_are_independent_"
         "and_one_window_is_the_base_model")
def pcw_generate(model, windows, task: Tensor, max_new_tokens: int = 20,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 greedy: bool = False, use_cache: bool | None = None, eos_id: int | None = None,
                 generator: torch.Generator | None = None, return_logits: bool = False):
    """Continue ``task`` (1-D ids) after the parallel context ``windows`` (list of 1-D ids).
    Returns the new tokens (m,), and with ``return_logits`` the logits of each step (m, V)."""
    return _parallel_generate(model, "pcw", windows, task, max_new_tokens, "left", False,
                              temperature, top_k, top_p, greedy, use_cache, eos_id, generator,
                              return_logits)


@INFERENCE.register(
    "structured_prompting",
    paper="Structured Prompting: Scaling In-Context Learning to 1,000 Examples (Hao et al., "
          "2022)",
    equation="§2.2: groups encoded separately, right-aligned positions; test input attends "
             "with group scores e^{qk}/M (score term −log M)",
    complexity=("prefill O((Σ|G_i| + m)²), decode O(Σ|G_i| + m) per token",
                "KV cache of Σ|G_i| + m keys"),
    test="tests/papers/test_inference_parallel_context.py::test_structured_prompting_rescales_"
         "M_copies_to_one_group")
def structured_generate(model, groups, task: Tensor, max_new_tokens: int = 20,
                        temperature: float = 1.0, top_k: int | None = None,
                        top_p: float | None = None, greedy: bool = False,
                        use_cache: bool | None = None, eos_id: int | None = None,
                        generator: torch.Generator | None = None, return_logits: bool = False):
    """Continue the test input ``task`` (1-D ids) after the demonstration ``groups`` (list of
    1-D ids, each encoded alone). Returns the new tokens, and with ``return_logits`` the logits
    of each step (m, V)."""
    return _parallel_generate(model, "structured_prompting", groups, task, max_new_tokens,
                              "right", True, temperature, top_k, top_p, greedy, use_cache,
                              eos_id, generator, return_logits)
