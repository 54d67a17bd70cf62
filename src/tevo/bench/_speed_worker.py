"""One point of the speed study, measured where it runs: a fresh child process on CPU (so its
peak resident memory belongs to that point alone), or in-process on GPU (the allocator's peak).

``measure(spec)`` builds one mixer from its registry entry, then times, per mode:
- ``forward``: y = mixer(x) under no_grad;
- ``train``: forward + backward of a scalar loss (gradients of the input and every parameter);
- ``decode``: one-token steps after a prefill of n tokens (mixers with ``supports.cache``);
and records the peak memory of the mode above the memory held before it (model + inputs).

On Linux the high-water mark of resident memory is reset between modes by writing "5" to
/proc/self/clear_refs; ``resource.getrusage`` then reads the peak of that mode alone. Memory is
read from one extra call per mode made after the timed calls of every mode (so that the
timings run under glibc's own dynamic mmap threshold, which ``mallopt`` switches off for good),
with glibc's mmap threshold lowered to one page: every buffer then gets fresh pages and gives
them back when freed, so the high-water mark counts the mode's own allocations instead of
whatever the heap happened to have cached (with the default allocator a small mode can reuse the
warm-up's pages and read as 0). Importing
this module in the fork server pre-loads torch and the registries, so a child starts in
milliseconds instead of the seconds a fresh interpreter needs.
"""
from __future__ import annotations

import ctypes
import functools
import json
import os
import resource
import select
import signal
import subprocess
import sys
import time
import traceback

import torch

from tevo.nn.context import MixerContext
from tevo.registry import MIXERS

MIXERS.names()          # discover every registered module once, in the fork server


@functools.lru_cache(maxsize=1)
def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _malloc_trim() -> None:
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)                         # hand freed heap back to the OS


_M_MMAP_THRESHOLD = -3                              # glibc mallopt parameter


def _mmap_threshold(nbytes: int) -> bool:
    """Serve allocations of at least ``nbytes`` with their own mmap (glibc); False elsewhere."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(nbytes)))


def reset_peak_rss() -> bool:
    """Reset this process's resident-memory high-water mark (Linux ≥ 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def current_rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024      # KiB on Linux


class _Memory:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.reset_ok = True

    def start(self) -> int:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return torch.cuda.memory_allocated(self.device)
        _malloc_trim()
        self.reset_ok = reset_peak_rss() and self.reset_ok
        return current_rss()

    def peak(self) -> int:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        return peak_rss()

    def measure(self, fn, sync) -> int:
        """Peak bytes of one call of ``fn`` above the memory held before it."""
        exact = not self.cuda and _mmap_threshold(4096)
        try:
            base = self.start()
            fn()
            sync()
            return max(0, self.peak() - base)
        finally:
            if exact:
                _mmap_threshold(128 * 1024)         # glibc's default, for the next timings


def tensor_bytes(obj) -> int:
    """Bytes held by the tensors of a (nested) state."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def _timed(fn, repeat: int, budget_s: float, sync) -> list[float]:
    """One warm-up call, then ``repeat`` calls are timed (more, up to 10×, while they are
    cheap: under 0.3 s in all, for a stable median); stops early past ``budget_s``."""
    fn()                                            # warm-up: kernels, thread pools, caches
    sync()
    times, spent = [], 0.0
    while len(times) < 10 * max(1, repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
        if spent > budget_s or (len(times) >= max(1, repeat) and spent > 0.3):
            break
    return times


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    k = len(xs) // 2
    return xs[k] if len(xs) % 2 else 0.5 * (xs[k - 1] + xs[k])


def measure(spec: dict) -> dict:
    """spec: mixer, options, d_model, n, batch, dtype (fp32|bf16), device, causal, modes,
    repeat, budget_s (per mode), decode_steps; fallback_options (optional): built instead when
    ``options`` fail to build (reported as ``options_fallback``). Returns {mode: {...}} or
    {"error": ...}."""
    try:
        return _measure(spec)
    except Exception as e:                          # reported, never dropped
        return {"error": f"{type(e).__name__}: {e}".strip(), "traceback": traceback.format_exc(
            limit=4)}


def _measure(spec: dict) -> dict:
    torch.manual_seed(0)
    dev = torch.device(spec.get("device", "cpu"))
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[spec.get("dtype", "fp32")]
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    name, n, d, B = spec["mixer"], int(spec["n"]), int(spec["d_model"]), int(spec.get("batch", 1))
    causal = bool(spec.get("causal", True))
    steps = int(spec.get("decode_steps", 8))
    # fixed-length mixers hold tables of max_len positions: room for the decode steps after n
    grid = image_grid(name, n)           # image-only mixers run on an h×w grid of n tokens
    kw = dict(d_model=d, max_len=n + steps + 1, causal=causal, layer=0, n_layers=1,
              dropout=0.0, **({"grid": list(grid)} if grid else {}))
    fallback = None
    try:
        mixer = MIXERS.build({"name": name, **spec.get("options", {})}, **kw)
    except Exception as e:          # defaults that do not fit this width: the fallback options
        if spec.get("fallback_options") is None:
            raise
        fallback = f"{type(e).__name__}: {e}".strip().splitlines()[0][:200]
        mixer = MIXERS.build({"name": name, **spec["fallback_options"]}, **kw)
    mixer = mixer.to(dev, dtype)
    x = torch.randn(B, n, d, device=dev, dtype=dtype)
    pos = torch.arange(n, device=dev).unsqueeze(0).expand(B, n)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    mem = _Memory(dev)
    repeat, budget = int(spec.get("repeat", 3)), float(spec.get("budget_s", 10.0))
    out = {"params": sum(p.numel() for p in mixer.parameters())}
    if fallback:
        out["options_fallback"] = fallback
    calls = {}
    for mode in spec.get("modes", ("forward", "train", "decode")):
        if mode == "decode" and not MIXERS.get(name).supports.cache:
            continue
        try:
            out[mode], calls[mode] = _mode(mode, mixer, x, pos, causal, n, d, B, dev, dtype,
                                           steps, repeat, budget, sync, mem, grid)
        except Exception as e:                      # one failing mode keeps the others
            out[mode] = {"error": f"{type(e).__name__}: {e}".strip()}
    # Peak memory of forward / train after every timing: measuring it pins glibc's mmap
    # threshold (mallopt turns its dynamic threshold off for the rest of the process), and
    # timings under a pinned 128 KiB threshold page-fault every large buffer on every call —
    # several times slower at long lengths than what a user's process sees.
    for mode, fn in calls.items():
        if fn is not None and "error" not in out[mode]:
            try:
                out[mode]["peak_bytes"] = mem.measure(fn, sync)
            except Exception as e:
                out[mode] = {"error": f"{type(e).__name__}: {e}".strip()}
    out["peak_reset"] = mem.reset_ok
    return out


def image_grid(name: str, n: int) -> tuple[int, int] | None:
    """None for a mixer that takes a 1-D sequence; else the most square h×w = n grid."""
    if MIXERS.get(name).supports.text:
        return None
    h = max(a for a in range(1, int(n ** 0.5) + 1) if n % a == 0)
    return h, n // h


def _mode(mode, mixer, x, pos, causal, n, d, B, dev, dtype, steps, repeat, budget, sync,
          mem, grid=None) -> dict:
    """Times of one mode — forward, train (forward + backward) or decode (with its peak memory
    and state size) — and the call whose peak memory is measured later (None for decode)."""
    rec: dict = {}
    fn = None
    if mode == "forward":
        mixer.eval()

        def fn():
            mixer.eval()                            # (fn is called again for its memory)
            with torch.no_grad():
                mixer(x, MixerContext(causal=causal, positions=pos, grid=grid))
        rec["times"] = _timed(fn, repeat, budget, sync)
    elif mode == "train":
        mixer.train()
        xg = x.detach().clone().requires_grad_(True)

        def fn():
            mixer.train()
            mixer.zero_grad(set_to_none=True)
            xg.grad = None
            ctx = MixerContext(causal=causal, positions=pos, grid=grid)
            y, _ = mixer(xg, ctx)
            loss = y.float().square().mean()
            aux = ctx.aux_loss()
            (loss + aux if torch.is_tensor(aux) else loss).backward()
        rec["times"] = _timed(fn, repeat, budget, sync)
    elif mode == "decode":
        mixer.eval()
        with torch.no_grad():
            state = mixer.init_state(B, dev, dtype)
            _, state = mixer(x, MixerContext(causal=causal, positions=pos), state)  # prefill
            rec["state_bytes"] = tensor_bytes(state)
            times, base = [], None
            for i in range(steps + 1):
                x1 = torch.randn(B, 1, d, device=dev, dtype=dtype)
                p1 = torch.full((B, 1), n + i, device=dev, dtype=torch.long)
                sync()
                t0 = time.perf_counter()
                _, state = mixer(x1, MixerContext(causal=causal, positions=p1), state)
                sync()
                times.append(time.perf_counter() - t0)
                if base is None:                 # the first step is the warm-up
                    base = mem.start()
            rec["peak_bytes"] = max(0, mem.peak() - base)
        rec["times"] = times[1:]
    else:
        raise ValueError(f"unknown mode {mode!r}")
    rec["median_s"] = _median(rec["times"])
    rec["min_s"] = min(rec["times"])
    return rec, fn


def run_forked(spec: dict, timeout_s: float) -> dict:
    """Measure in a forked child (a fresh process with its own peak memory); the child is
    killed after ``timeout_s``. Only safe in a process that has not run torch kernels yet:
    the fork server below, which only imports."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                    # child
        os.close(r)
        code = 0
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)                     # prints cannot corrupt the protocol
            data = json.dumps(measure(spec), default=str).encode()
        except BaseException as e:                  # noqa: BLE001 - the child must report
            data = json.dumps({"error": f"{type(e).__name__}: {e}"}).encode()
            code = 1
        with os.fdopen(w, "wb") as f:
            f.write(data)
        os._exit(code)
    os.close(w)
    chunks, end = [], time.monotonic() + timeout_s
    try:
        while True:
            left = end - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return {"timeout": True, "timeout_s": timeout_s}
            ready, _, _ = select.select([r], [], [], left)
            if ready:
                chunk = os.read(r, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(r)
    _, status = os.waitpid(pid, 0)
    if not chunks:
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        why = f"killed by signal {sig}" if sig else f"exit code {os.WEXITSTATUS(status)}"
        return {"error": f"worker process died ({why}; out of memory?)"}
    return json.loads(b"".join(chunks))


def serve() -> None:
    """Fork server: one JSON spec per line on stdin, one JSON result per line on stdout."""
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)                                   # stray prints go to stderr
    for line in sys.stdin:
        if not line.strip():
            continue
        spec = json.loads(line)
        res = run_forked(spec, float(spec.get("timeout_s", 600)))
        proto.write(json.dumps(res, default=str) + "\n")
        proto.flush()


class ForkServer:
    """Parent side: a ``python -m tevo.bench._speed_worker`` process that forks one fresh
    child per point (torch and the registries are imported once, in the server)."""

    def __init__(self):
        self.proc = None

    def _start(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "tevo.bench._speed_worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1)

    def measure(self, spec: dict, timeout_s: float) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        spec = dict(spec, timeout_s=timeout_s)
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()
        # the server enforces the child's timeout; allow it the import time on top
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s + 120)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            return {"error": "fork server did not answer"}
        return json.loads(line)

    def close(self):
        if self.proc is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


if __name__ == "__main__":
    serve()
