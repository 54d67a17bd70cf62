"""Weights in safetensors (no pickled code is ever loaded)."""
from __future__ import annotations

import os

import torch
from safetensors.torch import load_file, save_file
from torch import nn


def state_dict_for_save(model: nn.Module) -> dict:
    """The state dict with tied (shared-storage) tensors kept once and made contiguous;
    ``load_weights`` restores ties through the module itself."""
    out, seen = {}, {}
    for k, v in model.state_dict().items():
        key = (v.data_ptr(), v.shape, v.stride()) if v.numel() else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen[key] = k
        out[k] = v.detach().contiguous().clone() if not v.is_contiguous() else v.detach()
    return out


def save_weights(model: nn.Module, path) -> None:
    """Atomic write: a temporary file renamed over the target."""
    tmp = f"{path}.tmp"
    save_file(state_dict_for_save(model), tmp)
    os.replace(tmp, path)


def load_weights(model: nn.Module, path, strict: bool = True) -> None:
    sd = load_file(str(path))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    tied = {k for k in missing if _is_tied(model, k, sd)}
    missing = [k for k in missing if k not in tied]
    if strict and (missing or unexpected):
        raise RuntimeError(f"checkpoint does not match the model: missing {missing[:5]}, "
                           f"unexpected {list(unexpected)[:5]}")


def _is_tied(model: nn.Module, key: str, sd: dict) -> bool:
    params = dict(model.named_parameters(remove_duplicate=False))
    p = params.get(key)
    if p is None:
        return False
    return any(q is p and k in sd for k, q in params.items() if k != key)
