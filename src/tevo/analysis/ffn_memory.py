"""FFN key–value memories: what triggers each FFN key, and what its value promotes.

Paper: Transformer Feed-Forward Layers Are Key-Value Memories (Geva, Schuster, Berant & Levy,
2021), §2–4:
    FF(x) = f(x · Kᵀ) · V            rows k_i of K = W_1 are keys, rows v_i of V = W_2ᵀ values
    m_i(x) = f(x · k_i)              the memory coefficient of key i at a position (§2)
    trigger examples of key i        the prefixes x_1..x_j of a corpus whose last position has
                                     the largest m_i (§3)
    p_i = softmax(v_i · Eᵀ)          the value projected on the output embedding E: the tokens
                                     key i's value promotes (§4)
    agreement                        how often the top token of p_i is the next token of key
                                     i's top trigger example (§4.2: rises in upper layers).
The coefficients are read at the input of each FFN's output projection (``fc2``), so any FFN of
the form act(x W_1) W_2 works, gated ones too (m = act(x W) ⊗ x V). FFNs without such a
projection (MoE, PKM, ...) are skipped.

    report = ffn_kv_memory(model, ids, tokenizer.decode, keys=5)      # or from the CLI:
    tevo analyze ffn-memory RUN_DIR [--weights W] [--text FILE] [--keys 5] [--json]
Complexity: one forward pass over the text; O(L·d_ff·top) state for the running top-k.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..registry import TOOLS


def kv_ffns(model: nn.Module) -> list[tuple[int, nn.Module]]:
    """(layer, FFN) for every block FFN that has a key–value form (an ``fc2`` Linear)."""
    blocks = getattr(getattr(model, "blocks", None), "blocks", None)
    if blocks is None:
        raise InputError("ffn-memory needs a decoder-only or encoder model with model.blocks")
    out = []
    for i, blk in enumerate(blocks):
        for t, sub in zip(blk.layout, blk.sublayers):
            ffn = sub.ffn if t == "p" else sub if t == "f" else None
            if ffn is not None and isinstance(getattr(ffn, "fc2", None), nn.Linear):
                out.append((i, ffn))
    return out


def _windows(ids: Tensor, seq_len: int) -> Tensor:
    n = (ids.numel() // seq_len) * seq_len
    if n == 0:
        raise InputError(f"the text has {ids.numel()} tokens, fewer than one window of {seq_len}")
    return ids[:n].view(-1, seq_len)                                  # (W, seq_len)


@TOOLS.register(
    "ffn_kv_memory",
    paper="Transformer Feed-Forward Layers Are Key-Value Memories (Geva et al., 2021)",
    equation="§2: FF(x) = f(x·Kᵀ)·V, m_i = f(x·k_i); §3 top-triggering prefixes per key; "
             "§4 p_i = softmax(v_i·Eᵀ)",
    complexity=("one forward pass", "O(L d_ff top)"),
    test="tests/test_analysis.py::test_ffn_memory_tool_on_a_trained_model")
@torch.no_grad()
def ffn_kv_memory(model: nn.Module, ids: Tensor, decode: Callable | None = None,
                  layers: list[int] | None = None, keys: int | list[int] = 5, top: int = 5,
                  tokens: int = 10, context: int = 24, seq_len: int | None = None,
                  batch: int = 8) -> dict:
    """Top trigger prefixes and promoted tokens of FFN keys.

    ids: 1-D token ids of the text; decode: ids → str for display. ``keys``: how many keys per
    layer (those with the largest coefficient anywhere in the text) or an explicit list.
    Returns {"layers": [{"layer", "keys": [{"key", "triggers": [{"coef", "prefix", "next"}],
    "value_tokens": [{"token", "prob"}]}], "agreement"}], "n_tokens", "d_ff"}."""
    decode = decode or (lambda t: " ".join(map(str, t)))
    ffns = kv_ffns(model)
    if layers is not None:
        bad = sorted(set(layers) - {i for i, _ in ffns})
        if bad:
            raise InputError(f"no key-value FFN in layer(s) {bad} "
                             f"(valid: {sorted({i for i, _ in ffns})})")
        ffns = [(i, f) for i, f in ffns if i in layers]
    if not ffns:
        raise InputError("the model has no key-value FFN (an FFN with an fc2 output projection)")
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear):
        raise InputError("ffn-memory needs an output embedding (model.head) to read values")
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    cfg = getattr(model, "cfg", None)
    L = seq_len or min(getattr(cfg, "max_len", 128), 128)
    win = _windows(ids.to(torch.long).flatten(), L)                  # (W, L)
    best = {i: None for i, _ in ffns}                                 # running top-k per key
    cur = {}

    def hook(layer):
        def fn(mod, args):
            cur[layer] = args[0].detach().float().reshape(-1, args[0].shape[-1])   # (B·L, d_ff)
        return fn
    handles = [f.fc2.register_forward_pre_hook(hook(i)) for i, f in ffns]
    try:
        for s in range(0, win.shape[0], batch):
            chunk = win[s:s + batch].to(dev)
            model(chunk)
            flat = torch.arange(s * L, s * L + chunk.numel(), device=dev)   # global position
            for i, _ in ffns:
                c = cur[i]                                            # (T, d_ff)
                pos = flat.unsqueeze(1).expand_as(c)
                if best[i] is not None:
                    c = torch.cat([best[i][0], c])
                    pos = torch.cat([best[i][1], pos])
                k = min(top, c.shape[0])
                v, j = c.topk(k, dim=0)                               # (top, d_ff)
                best[i] = (v, pos.gather(0, j))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    stream = win.flatten().tolist()
    E = head.weight.float()                                           # (V, d) output embedding
    report = {"n_tokens": len(stream), "layers": []}
    for i, ffn in ffns:
        coefs, where = best[i]
        chosen = list(keys) if isinstance(keys, (list, tuple)) else \
            coefs[0].topk(min(int(keys), coefs.shape[1])).indices.tolist()
        V = ffn.fc2.weight.float()                                    # (d, d_ff): v_i = V[:, i]
        probs = (E @ V[:, chosen]).T.softmax(-1)                      # (keys, vocab)
        entries, agree = [], 0
        for r, key in enumerate(chosen):
            trig = []
            for c, p in zip(coefs[:, key].tolist(), where[:, key].tolist()):
                w0 = (p // L) * L                                     # prefixes stay in a window
                nxt = stream[p + 1] if p + 1 < w0 + L else None
                trig.append({"coef": c, "position": p,
                             "prefix": decode(stream[max(w0, p - context + 1):p + 1]),
                             "next": None if nxt is None else decode([nxt]), "next_id": nxt})
            pv, pi = probs[r].topk(min(tokens, probs.shape[1]))
            vt = [{"token": decode([t]), "id": t, "prob": float(q)}
                  for t, q in zip(pi.tolist(), pv.tolist())]
            agree += int(trig[0]["next_id"] is not None and trig[0]["next_id"] == vt[0]["id"])
            entries.append({"key": key, "triggers": trig, "value_tokens": vt})
        report["layers"].append({"layer": i, "d_ff": V.shape[1], "keys": entries,
                                 "agreement": agree / max(len(chosen), 1)})
    return report


def format_report(report: dict) -> str:
    """A plain-text rendering of ``ffn_kv_memory``'s report."""
    lines = [f"FFN key-value memories over {report['n_tokens']} tokens "
             f"(Geva et al., 2021)"]
    for lay in report["layers"]:
        lines.append(f"\nlayer {lay['layer']}  (d_ff={lay['d_ff']}, top-1 value token = next "
                     f"token of the top trigger for {lay['agreement']:.0%} of the keys shown)")
        for k in lay["keys"]:
            lines.append(f"  key {k['key']}")
            for t in k["triggers"]:
                nxt = "" if t["next"] is None else f"  → {t['next']!r}"
                lines.append(f"    {t['coef']:8.3f}  …{t['prefix']!r}{nxt}")
            toks = ", ".join(f"{v['token']!r} {v['prob']:.3f}" for v in k["value_tokens"])
            lines.append(f"    value → {toks}")
    return "\n".join(lines)
