"""Pieces shared by the architectures: outputs, embeddings with range checks, init, state."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import InputError
from ..nn.context import positions_from_mask
from ..registry import INITS, MIXERS, NORMS, POSITIONS, split_spec


@dataclass
class ModelOutput:
    logits: Tensor
    state: dict | None = None
    aux_loss: Tensor | float = 0.0
    hidden: Tensor | None = None
    extra: dict = field(default_factory=dict)


def check_ids(ids: Tensor, vocab_size: int, name: str = "input_ids") -> None:
    if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise InputError(f"{name} must be integer token ids, got {ids.dtype}")
    if ids.numel():
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab_size:
            raise InputError(f"{name} has token id {hi if hi >= vocab_size else lo} outside "
                             f"the vocabulary [0, {vocab_size})")


def mixer_dims(cfg: ModelConfig) -> dict:
    """Dimensions a position encoding may need from the model's mixer."""
    name, kw = split_spec(cfg.mixer, "model.mixer")
    defaults = _defaults(MIXERS.get(name, "model.mixer").obj)   # e.g. GAU: heads=1, head_dim=s
    heads = int(kw.get("heads", defaults.get("heads") or 4))
    head_dim = int(kw.get("head_dim") or defaults.get("head_dim") or cfg.d_model // max(heads, 1))
    return {"d_model": cfg.d_model, "max_len": cfg.max_len, "heads": heads, "head_dim": head_dim}


def _defaults(cls) -> dict:
    import inspect
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return {}
    return {k: p.default for k, p in params.items()
            if p.default is not inspect.Parameter.empty and isinstance(p.default, int)}


def build_position(cfg: ModelConfig):
    # n_layers: for encodings with per-layer parameters (read through ``for_layer``)
    return POSITIONS.build(cfg.position, "model.position",
                           n_layers=max(cfg.n_layers, cfg.n_dec_layers or 0), **mixer_dims(cfg))


def build_norm(cfg: ModelConfig, spec=None):
    return NORMS.build(spec if spec is not None else cfg.norm, "model.norm", d_model=cfg.d_model)


def init_weights(model: nn.Module, cfg: ModelConfig, n_residual_layers: int) -> None:
    """GPT-2 init: N(0, 0.02) for linear and embedding weights, zero biases, and the output
    projections of residual branches scaled by 1/√(2L) (GPT-2 paper, §2.3). Components with an
    init of their own define ``init_weights()``, called afterwards; then ``cfg.init``."""
    std = cfg.init_std
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            s = std
            if name.endswith(("o_proj", "fc2", "out_proj")):
                s = std / math.sqrt(2 * max(n_residual_layers, 1))
            nn.init.normal_(m.weight, 0.0, s)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, std)
    # an input position encoding may ask for the token embeddings' scale (sinusoidal: d^-1/2)
    tok_std = getattr(getattr(model, "pos", None), "token_init_std", None)
    if tok_std is not None and isinstance(getattr(model, "embed", None), nn.Embedding):
        nn.init.normal_(model.embed.weight, 0.0, tok_std)
    for m in model.modules():
        if m is not model and hasattr(m, "init_weights"):
            m.init_weights()
    if cfg.init is not None:
        name, kw = split_spec(cfg.init, "model.init")
        INITS.get(name, "model.init").obj(model, cfg, **kw)


def extend_mask(state: dict | None, mask: Tensor | None, B: int, n: int, device) -> Tensor | None:
    """The key padding mask over past + new tokens (None when nothing is padded)."""
    past = None if state is None else state.get("mask")
    past_len = 0 if state is None else state.get("length", 0)
    if mask is None and past is None:
        return None
    if mask is None:
        mask = torch.ones(B, n, dtype=torch.bool, device=device)
    mask = mask.bool()
    if past is None and past_len:
        past = torch.ones(B, past_len, dtype=torch.bool, device=device)
    return mask if past is None else torch.cat([past, mask], 1)


def token_positions(state: dict | None, full_mask: Tensor | None, B: int, n: int, device) -> Tensor:
    past_len = 0 if state is None else state.get("length", 0)
    if full_mask is not None:
        return positions_from_mask(full_mask, n)
    return (torch.arange(n, device=device) + past_len).unsqueeze(0).expand(B, n)


def extra_options(cfg: ModelConfig, arch: str, spec: dict) -> dict:
    """Typed, ranged architecture options from ``model.extra``: ``spec`` maps a name to
    (default, type, low, high) with int/float bounds inclusive (None: unbounded) or to
    (default, tuple of choices). An unknown key or a bad value is one ConfigError line."""
    from ..errors import ConfigError
    ex = dict(cfg.extra or {})
    unknown = sorted(set(ex) - set(spec))
    if unknown:
        raise ConfigError(f"model.extra.{unknown[0]}", ex[unknown[0]], sorted(spec),
                          why=f"not an option of arch {arch!r}")
    out = {}
    for k, s in spec.items():
        v = ex.get(k, s[0])
        if isinstance(s[1], tuple):
            if v not in s[1]:
                raise ConfigError(f"model.extra.{k}", v, list(s[1]))
        else:
            typ, lo, hi = s[1], s[2], s[3]
            ok = not isinstance(v, bool) and (isinstance(v, int) if typ is int
                                              else isinstance(v, (int, float)))
            if ok and typ is float:
                ok = math.isfinite(v)
            if not ok or (lo is not None and v < lo) or (hi is not None and v > hi):
                rng = " and ".join(x for x in ((f">= {lo}" if lo is not None else ""),
                                               (f"<= {hi}" if hi is not None else "")) if x)
                raise ConfigError(f"model.extra.{k}", v,
                                  why=f"expected {'an integer' if typ is int else 'a number'}"
                                      f"{' ' + rng if rng else ''}")
            v = typ(v)
        out[k] = v
    return out
