"""Side-by-side checks of a tevo model against its Hugging Face original.

    report = check_equivalence(hf_model, tevo_model)     # {"max_abs_diff": 3e-7, ...}

Inputs are random token ids with padding: left padding for causal LMs (the HF side gets the
position ids ``cumsum(mask) − 1``, which is what tevo's language model uses), right padding for
encoders and encoder–decoders. Only real (non-padding) positions are compared.
"""
from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn


def kind_of(model: nn.Module) -> str:
    """"causal", "encoder" or "seq2seq" from the tevo architecture."""
    cfg = getattr(model, "cfg", None)
    arch = getattr(cfg, "arch", None)
    if arch == "transformer" or hasattr(model, "decode"):
        return "seq2seq"
    if arch == "gpt":
        return "causal"
    return "encoder"


def random_batch(vocab: int, batch: int = 3, n: int = 12, left: bool = True, seed: int = 0,
                 pad_id: int | None = None) -> tuple[Tensor, Tensor]:
    """Random ids (B, n) and a mask with rows of n, n−3, n−5 ... real tokens (row 0 unpadded).
    With ``pad_id`` the padding holds it and no real token equals it (RoBERTa finds its
    positions from the ids)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, n), generator=g)
    mask = torch.ones(batch, n, dtype=torch.long)
    for b in range(1, batch):
        pad = min(n - 1, 2 * b + 1)
        if left:
            mask[b, :pad] = 0
        else:
            mask[b, n - pad:] = 0
    if pad_id is not None:
        ids = torch.where(ids == pad_id, (ids + 1) % vocab, ids)
        ids = ids.masked_fill(mask == 0, pad_id)
    return ids, mask


def causal_positions(mask: Tensor) -> Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def hf_logits(hf: nn.Module, ids: Tensor, mask: Tensor, kind: str, tgt: Tensor | None = None,
              tgt_mask: Tensor | None = None) -> Tensor:
    if kind == "causal":
        kw = ({"position_ids": causal_positions(mask)}
              if "position_ids" in inspect.signature(hf.forward).parameters else {})
        return hf(input_ids=ids, attention_mask=mask, **kw).logits
    if kind == "seq2seq":
        return hf(input_ids=ids, attention_mask=mask, decoder_input_ids=tgt,
                  decoder_attention_mask=tgt_mask).logits
    if "attention_mask" in inspect.signature(hf.forward).parameters:
        out = hf(input_ids=ids, attention_mask=mask)
    else:                                   # FNet takes no mask: it mixes every position
        out = hf(input_ids=ids)
    return out.logits if getattr(out, "logits", None) is not None else out.prediction_logits


@torch.no_grad()
def tevo_logits(model: nn.Module, ids: Tensor, mask: Tensor, kind: str,
                tgt: Tensor | None = None, tgt_mask: Tensor | None = None) -> Tensor:
    if kind == "seq2seq":
        return model(ids, tgt, src_mask=mask, tgt_mask=tgt_mask).logits
    return model(ids, attention_mask=mask).logits


def max_diff(a: Tensor, b: Tensor, mask: Tensor) -> float:
    """Largest |a − b| over the real positions of (B, n, ...) outputs."""
    m = mask.bool()
    if a.shape != b.shape:
        raise ValueError(f"output shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a.float() - b.float())[m].abs().max())


@torch.no_grad()
def check_equivalence(hf: nn.Module, model: nn.Module, batch: int = 3, n: int = 12,
                      seed: int = 0) -> dict:
    """Max abs logit difference on a random padded batch; for seq2seq also over the decoder."""
    kind = kind_of(model)
    vocab = _vocab(model)
    pad = getattr(getattr(hf, "config", None), "pad_token_id", None)
    ids, mask = random_batch(vocab, batch, n, left=(kind == "causal"), seed=seed, pad_id=pad)
    if not _hf_reads_padding(hf):          # e.g. RWKV: the HF model ignores the mask
        mask = torch.ones_like(mask)
    tgt = tgt_mask = None
    if kind == "seq2seq":
        tgt, tgt_mask = random_batch(vocab, batch, max(2, n // 2), left=False, seed=seed + 1,
                                     pad_id=pad)
    a = hf_logits(hf, ids, mask, kind, tgt, tgt_mask)
    b = tevo_logits(model, ids, mask, kind, tgt, tgt_mask)
    return {"kind": kind, "max_abs_diff": max_diff(a, b, tgt_mask if kind == "seq2seq" else mask),
            "shape": tuple(a.shape)}


def _hf_reads_padding(hf: nn.Module) -> bool:
    """False for HF families whose models ignore the attention mask (their padded rows depend
    on the padding): those are compared on unpadded input."""
    from .hf import FAMILIES, _load_families
    _load_families()
    fam = FAMILIES.get(getattr(getattr(hf, "config", None), "model_type", None))
    return getattr(fam, "hf_reads_padding", True)


def _vocab(model: nn.Module) -> int:
    cfg = getattr(model, "cfg", None)
    if cfg is None and hasattr(model, "encoder"):
        cfg = model.encoder.cfg
    return cfg.vocab_size


# -- greedy decoding --------------------------------------------------------------------------
@torch.no_grad()
def greedy_tevo(model: nn.Module, ids: Tensor, mask: Tensor, steps: int) -> Tensor:
    """Greedy continuation of a left-padded batch with tevo's KV-cached decoding (one prefill,
    then one token a step). Returns the (B, steps) new tokens."""
    try:
        from ..inference.generate import generate
    except ImportError:                     # pragma: no cover - before tevo.inference existed
        generate = None
    if generate is not None:
        out = generate(model, ids, max_new_tokens=steps, greedy=True, use_cache=True,
                       attention_mask=mask)
        return out[:, ids.shape[1]:]
    state = model.init_state(ids.shape[0], ids.device)
    o = model(ids, attention_mask=mask, state=state)
    out = []
    for _ in range(steps):
        tok = o.logits[:, -1].argmax(-1, keepdim=True)           # (B, 1)
        out.append(tok)
        o = model(tok, attention_mask=torch.ones_like(tok), state=o.state)
    return torch.cat(out, 1)


@torch.no_grad()
def greedy_hf(hf: nn.Module, ids: Tensor, mask: Tensor, steps: int) -> Tensor:
    """Greedy continuation with the transformers model, recomputing the whole context each
    step with position ids ``cumsum(mask) − 1`` (the reference: no cache, and no reliance on
    how a given transformers version derives positions inside ``generate``)."""
    params = inspect.signature(hf.forward).parameters
    mask = mask.long()
    out = []
    for _ in range(steps):
        kw = {"use_cache": False} if "use_cache" in params else {}
        if "position_ids" in params:
            kw["position_ids"] = causal_positions(mask)
        logits = hf(input_ids=ids, attention_mask=mask, **kw).logits
        tok = logits[:, -1].argmax(-1, keepdim=True)              # (B, 1)
        out.append(tok)
        ids = torch.cat([ids, tok], 1)
        mask = torch.cat([mask, torch.ones_like(tok)], 1)
    return torch.cat(out, 1)


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0, std: float = 0.1) -> nn.Module:
    """Give every parameter random values (in place), norms around 1: freshly initialised
    reference models have unit norms and zero biases, under which swapped norms or biases
    would go unnoticed. Tied parameters stay tied (they are one tensor); frozen ones
    (RoFormer's fixed sinusoid table) are left alone."""
    g = torch.Generator().manual_seed(seed)
    norm_params = {id(p) for m in model.modules() if "norm" in type(m).__name__.lower()
                   for p in m.parameters(recurse=False)}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        noise = torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * std
        if id(p) in norm_params and name.endswith("weight"):
            p.copy_(1.0 + noise)
        else:
            p.copy_(noise)
    return model
