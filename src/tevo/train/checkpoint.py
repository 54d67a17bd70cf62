"""Checkpoints: weights in safetensors; optimiser, schedule, RNG and data-position state in a
``torch.save`` file read back with ``weights_only=True`` (tensors and plain Python values only,
so loading never executes pickled code). Each checkpoint is a folder written under a temporary
name and renamed into place (atomic), and only the last ``keep_last`` are kept:

    RUN/checkpoints/step_00001000/{model.safetensors, state.pt}
"""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn


def state_dict_for_save(model: nn.Module, full: dict | None = None) -> dict:
    """The state dict with tied (shared-storage) tensors kept once and made contiguous;
    ``load_weights`` restores ties through the module itself. ``full``: the gathered
    (unsharded) state dict of an FSDP-sharded ``model``, saved with the same keys."""
    out, seen = {}, {}
    for k, v in model.state_dict().items():
        t = v.to_local() if hasattr(v, "to_local") else v        # a DTensor: this rank's shard
        key = (t.data_ptr(), t.shape, t.stride()) if t.numel() else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen[key] = k
        if full is not None:
            v = full[k]
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


# -- training checkpoints -------------------------------------------------------------------
CKPT_DIR = "checkpoints"
WEIGHTS = "model.safetensors"
STATE = "state.pt"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def list_checkpoints(run_dir) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP_DIR.match(p.name)) and (p / WEIGHTS).exists() and (p / STATE).exists()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir) -> Path | None:
    ck = list_checkpoints(run_dir)
    return ck[-1] if ck else None


def save_checkpoint(run_dir, step: int, model: nn.Module, state: dict, keep_last: int = 2,
                    weights: dict | None = None) -> Path:
    """Write weights + state under a temporary name, rename it into place, prune old ones.
    ``weights``: the tensors to write instead of ``model``'s (e.g. gathered from FSDP shards)."""
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}_{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(state_dict_for_save(model) if weights is None else weights, str(tmp / WEIGHTS))
    torch.save(state, tmp / STATE)
    if final.exists():                     # the same step saved again (e.g. stop right after)
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep_last and keep_last > 0:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path, model: nn.Module | None = None, map_location="cpu") -> dict:
    """Load weights into ``model`` (if given) and return the state dict (weights_only)."""
    path = Path(path)
    if model is not None:
        load_weights(model, path / WEIGHTS)
    return torch.load(path / STATE, map_location=map_location, weights_only=True)


def rng_state() -> dict:
    """Every random generator training may touch, as tensors and plain values."""
    np_state = np.random.get_state()
    st = {"torch": torch.get_rng_state(), "python": random.getstate(),
          "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                    int(np_state[2]), int(np_state[3]), float(np_state[4]))}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"].cpu())
    if "python" in st:
        v, internal, gauss = st["python"]
        random.setstate((v, tuple(internal), gauss))
    if "numpy" in st:
        name, keys, pos, has_gauss, cached = st["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in st["cuda"]])
