"""Checkpoints: weights in safetensors; optimiser, schedule, RNG and data-position state in a
``torch.save`` file read back with ``weights_only=True`` (tensors and plain Python values only,
so loading never executes pickled code). Each checkpoint is a folder written under a temporary
name and renamed into place (atomic), and only the last ``keep_last`` are kept:

    RUN/checkpoints/step_00001000/{model.safetensors, state.pt, manifest.json}

``manifest.json`` holds each file's size and SHA-256. Readers (``open_checkpoint``) open the
files first and read them whole, so a checkpoint pruned by a running trainer meanwhile is still
read intact (or, if it vanished before it was opened, the next newest is taken), and verify the
checksums: a damaged checkpoint (truncated, overwritten) is skipped, with a one-line warning,
for the newest intact one.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import InputError, TevoError


class DamagedCheckpoint(TevoError):
    """A checkpoint file is missing, truncated or does not match its manifest checksum."""


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
    """Load a safetensors file (a path, or its bytes) into ``model``; tied tensors are restored
    through the module."""
    sd = load_bytes(path) if isinstance(path, (bytes, bytearray)) else load_file(str(path))
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
MANIFEST = "manifest.json"
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


def _digest(path: Path) -> dict:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            n += len(block)
    return {"bytes": n, "sha256": h.hexdigest()}


def remove_leftovers(run_dir) -> None:
    """Remove half-written checkpoint folders (``.tmp_step_*``) that a killed writer left; the
    caller holds the run folder (``claim``), so no other writer is using them."""
    root = Path(run_dir) / CKPT_DIR
    if root.is_dir():
        for p in root.glob(".tmp_step_*"):
            shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(run_dir, step: int, model: nn.Module, state: dict, keep_last: int = 2,
                    weights: dict | None = None) -> Path:
    """Write weights + state + manifest (checksums) under a temporary name, rename it into place,
    prune old ones. ``weights``: the tensors to write instead of ``model``'s (e.g. gathered from
    FSDP shards)."""
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    remove_leftovers(run_dir)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}_{os.getpid()}"
    tmp.mkdir()
    save_file(state_dict_for_save(model) if weights is None else weights, str(tmp / WEIGHTS))
    torch.save(state, tmp / STATE)
    manifest = {"step": step, "files": {n: _digest(tmp / n) for n in (WEIGHTS, STATE)}}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    if final.exists():                     # the same step saved again (e.g. stop right after)
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep_last and keep_last > 0:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(path, names=(WEIGHTS, STATE)) -> dict[str, bytes]:
    """The bytes of ``names`` in checkpoint folder ``path``, all opened before any is read (so a
    concurrent prune cannot take them away half-way) and checked against the manifest. Raises
    FileNotFoundError if the folder vanished before the files were opened, DamagedCheckpoint if
    a file is truncated or altered."""
    path = Path(path)
    handles = {}
    try:
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except FileNotFoundError:
            if not path.is_dir():
                raise
            manifest = None                # written before checksums existed: trusted as is
        except ValueError:
            raise DamagedCheckpoint(f"{path}: {MANIFEST} is not valid JSON") from None
        for n in names:
            handles[n] = open(path / n, "rb")
        blobs = {n: f.read() for n, f in handles.items()}
    finally:
        for f in handles.values():
            f.close()
    if manifest is None and WEIGHTS in blobs:   # no checksums: at least a whole file
        _check_safetensors(blobs[WEIGHTS], path / WEIGHTS)
    if manifest is not None:
        for n, blob in blobs.items():
            want = manifest.get("files", {}).get(n)
            if want is None:
                continue
            if len(blob) != want["bytes"]:
                raise DamagedCheckpoint(f"{path / n}: {len(blob)} bytes, the manifest says "
                                        f"{want['bytes']} (truncated)")
            if hashlib.sha256(blob).hexdigest() != want["sha256"]:
                raise DamagedCheckpoint(f"{path / n}: checksum does not match the manifest")
    return blobs


def _check_safetensors(blob: bytes, where: Path) -> None:
    """A safetensors file is an 8-byte header length, a JSON header and the tensor bytes the
    header's offsets cover exactly: anything else is truncated or not safetensors."""
    try:
        n = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8:8 + n]) if 8 <= 8 + n <= len(blob) else None
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"),
                  default=0) if isinstance(header, dict) else None
    except (ValueError, TypeError, KeyError, IndexError):
        end = None
    if end is None or 8 + n + end != len(blob):
        raise DamagedCheckpoint(f"{where}: not a complete safetensors file (truncated)")


def open_checkpoint(run_dir, names=(WEIGHTS, STATE), checkpoint=None):
    """(folder, {name: bytes}) of the newest intact checkpoint of ``run_dir`` (or of the given
    ``checkpoint`` folder), or (None, {}) when there is none. Damaged checkpoints are skipped
    with a one-line warning on stderr; one pruned while being resolved is replaced by the next
    newest."""
    if checkpoint is not None:
        try:
            return Path(checkpoint), read_checkpoint(checkpoint, names)
        except FileNotFoundError as e:
            raise InputError(f"checkpoint {checkpoint}: {e.strerror}: {e.filename}") from None
    for _ in range(10):                    # each retry: a checkpoint vanished under a prune
        damaged = []
        for ck in reversed(list_checkpoints(run_dir)):
            try:
                blobs = read_checkpoint(ck, names)
            except FileNotFoundError:
                break                      # pruned meanwhile: list again
            except DamagedCheckpoint as e:
                damaged.append(str(e))
                continue
            for d in damaged:
                print(f"warning: {d}; skipping this checkpoint", file=sys.stderr, flush=True)
            if damaged:
                print(f"warning: using {ck}, the newest intact checkpoint", file=sys.stderr,
                      flush=True)
            return ck, blobs
        else:
            if damaged:
                raise DamagedCheckpoint(f"every checkpoint in {Path(run_dir) / CKPT_DIR} is "
                                        f"damaged (newest: {damaged[0]})")
            return None, {}
    raise InputError(f"{run_dir}: checkpoints kept vanishing while being read")


def load_state(blob: bytes, map_location="cpu") -> dict:
    """A training state from the bytes of ``state.pt`` (weights_only: never executes code)."""
    return torch.load(io.BytesIO(blob), map_location=map_location, weights_only=True)


def load_checkpoint(path, model: nn.Module | None = None, map_location="cpu") -> dict:
    """Load weights into ``model`` (if given) and return the state dict (weights_only), after
    checking both files against the manifest."""
    blobs = read_checkpoint(path, (WEIGHTS, STATE) if model is not None else (STATE,))
    if model is not None:
        load_weights(model, blobs[WEIGHTS])
    return load_state(blobs[STATE], map_location)


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
