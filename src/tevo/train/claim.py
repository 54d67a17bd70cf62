"""Exclusive use of a run folder: a writer (``tevo train``) claims its folder atomically and
holds an advisory lock on ``RUN/.lock`` for the run's life, so two trainers never share one
folder. A new run given a taken ``train.out_dir`` gets the next free name (``out-2``, …); a
resumed run whose folder is in use is refused in one line naming the holder's pid. Readers
(``tevo eval``, ``generate``) take no lock: they pin the checkpoint they read instead
(``checkpoint.open_checkpoint``).

The lock is ``flock`` on POSIX (released by the kernel when the process dies, so a killed run
never leaves a stale lock); elsewhere the pid file is written without a lock. Claims held by
this process are shared: a second Trainer in the same process on the same folder (a test that
stops and resumes) takes the claim over rather than deadlocking on itself.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError

try:
    import fcntl
except ImportError:                        # pragma: no cover - not POSIX
    fcntl = None

LOCK = ".lock"
_HELD: dict[str, "Claim"] = {}             # realpath -> this process's claim


class Claim:
    """An open, locked ``RUN/.lock`` holding this process's pid."""

    def __init__(self, run_dir: Path, fd: int):
        self.run_dir, self.fd = Path(run_dir), fd

    def release(self) -> None:
        if self.fd is None:
            return
        _HELD.pop(os.path.realpath(self.run_dir), None)
        try:
            os.close(self.fd)              # closing the descriptor drops the flock
        finally:
            self.fd = None


def _try_lock(run_dir: Path) -> Claim | None:
    """The claim of ``run_dir`` (which must exist), or None when another process holds it."""
    key = os.path.realpath(run_dir)
    if key in _HELD and _HELD[key].fd is not None:
        return _HELD[key]
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    claim = _HELD[key] = Claim(run_dir, fd)
    return claim


def holder(run_dir) -> str:
    try:
        return (Path(run_dir) / LOCK).read_text().strip() or "?"
    except OSError:
        return "?"


def claim_new(out_dir) -> tuple[Path, Claim]:
    """The first of ``out_dir``, ``out_dir-2``, ``out_dir-3``, … that is absent or empty and not
    held by another writer, created and locked (exclusive, race-free between processes)."""
    base = Path(out_dir)
    for i in range(1, 10_000):
        q = base if i == 1 else base.with_name(f"{base.name}-{i}")
        if q.exists() and not q.is_dir():
            continue
        q.mkdir(parents=True, exist_ok=True)
        ours = os.path.realpath(q) in _HELD          # a run of this process lives here
        claim = None if ours else _try_lock(q)
        if claim is None:
            continue                       # another writer holds it
        if any(p.name != LOCK for p in q.iterdir()):
            claim.release()                # locked only to look: a finished run lives here
            continue
        return q, claim
    raise InputError(f"no free run folder name after {base}-9999")


def claim_existing(run_dir) -> Claim:
    """Lock an existing run folder (resume), or a one-line error naming the process using it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    claim = _try_lock(run_dir)
    if claim is None:
        raise InputError(f"run {run_dir} is in use by pid {holder(run_dir)}; wait for it to "
                         f"finish or stop it first")
    return claim
