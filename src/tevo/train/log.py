"""Run outputs: ``metrics.jsonl`` (one JSON object per logged step or evaluation), optional
TensorBoard, a rich progress bar (step, loss, tokens/s, ETA) or plain lines when not on a
terminal, and the loss-curve PNG at the end (when matplotlib is installed)."""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from ..errors import ConfigError

METRICS = "metrics.jsonl"


def read_metrics(run_dir) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass                        # a line cut by a crash
    return out


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class MetricsLog:
    """Append-only JSONL (flushed per record); on resume, records after the checkpoint's step
    are dropped so the file reads as one uninterrupted run."""

    def __init__(self, run_dir, resume_step: int | None = None, tensorboard: bool = False):
        self.path = Path(run_dir) / METRICS
        if resume_step is not None and self.path.exists():
            keep = [r for r in read_metrics(run_dir)
                    if r.get("step", 0) <= resume_step and not r.get("final")]
            tmp = f"{self.path}.tmp"
            with open(tmp, "w") as f:
                for r in keep:
                    f.write(json.dumps(r) + "\n")
            Path(tmp).replace(self.path)
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self.f = open(self.path, "a")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("train.tensorboard", True,
                                  why="needs the tensorboard package (pip install tensorboard)"
                                  ) from None
            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def write(self, record: dict) -> None:
        self.f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        self.f.flush()
        if self.tb is not None:
            split = record.get("split", "train")
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(f"{split}/{k}", v, record.get("step", 0))

    def close(self) -> None:
        self.f.close()
        if self.tb is not None:
            self.tb.close()


def _fmt_time(s: float) -> str:
    s = int(max(s, 0))
    if s >= 3600:
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


class ProgressDisplay:
    """A rich progress bar on a terminal; otherwise a plain line at most every ``every_s``."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True, every_s: float = 10.0):
        self.total, self.enabled, self.every_s = total, enabled, every_s
        self.bar = None
        self.last_print = 0.0
        if enabled and sys.stderr.isatty():
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
            self.bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                TextColumn("ETA"), TimeRemainingColumn())
            self.task = self.bar.add_task("train", total=total, completed=start, info="")
            self.bar.start()

    def tick(self, step: int) -> None:
        """Move the bar (between logged steps)."""
        if self.bar is not None:
            self.bar.update(self.task, completed=step)

    def update(self, step: int, info: str, eta_s: float | None = None, force: bool = False):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
            return
        now = time.time()
        if force or now - self.last_print >= self.every_s:
            self.last_print = now
            eta = f" eta {_fmt_time(eta_s)}" if eta_s is not None else ""
            print(f"step {step}/{self.total} {info}{eta}", flush=True)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.console.print(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def plot_losses(run_dir, path=None) -> Path | None:
    """loss.png: training and validation loss against step (None without matplotlib)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    recs = read_metrics(run_dir)
    train = [(r["step"], r["loss"]) for r in recs
             if r.get("split") == "train" and isinstance(r.get("loss"), (int, float))]
    val = [(r["step"], r["loss"]) for r in recs
           if r.get("split") == "val" and isinstance(r.get("loss"), (int, float))]
    if not train and not val:
        return None
    fig = Figure(figsize=(7, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if train:
        ax.plot(*zip(*train), label="train", lw=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="validation", lw=1.5, ms=4)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(Path(run_dir).name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(path or Path(run_dir) / "loss.png")
    fig.savefig(out)
    return out


def plot_confusion(matrix, classes, path, title: str = "") -> Path | None:
    """A confusion-matrix PNG (rows: true class, columns: predicted; counts in the cells);
    None without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    import numpy as np
    m = np.asarray(matrix)
    k = len(classes)
    size = min(2.0 + 0.45 * k, 14.0)
    fig = Figure(figsize=(size + 1.2, size), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(m, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xticks(range(k), [str(c) for c in classes], rotation=90 if k > 12 else 0)
    ax.set_yticks(range(k), [str(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if m[i, j]:
                    ax.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=8,
                            color="white" if m[i, j] > m.max() / 2 else "black")
    acc = np.trace(m) / max(m.sum(), 1)
    ax.set_title(f"{title}  accuracy {acc:.4f}".strip())
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    return out
