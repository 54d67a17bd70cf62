"""``tevo finetune RUN task=genre``: fine-tune a pre-trained run on a labelled task with the
one Trainer, then report accuracy on the held-out test works and the chance level.

    tevo finetune runs/bert task=genre train.steps=300 train.lr=1e-3

The new run (``RUN/finetune-<task>``) keeps the pre-trained model's architecture and tokenizer,
starts from its latest weights (``train.extra.init_from``; the objective's own modules of the
pre-training, e.g. ELECTRA's generator, are left behind) and trains all weights plus a linear
head (objective ``text_classification``). Its ``summary.json`` adds ``test_accuracy`` and the
``chance`` levels of the test split.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..config import load_config, to_dict
from ..errors import ConfigError, InputError
from ..registry import TASKS, split_spec
from .checkpoint import WEIGHTS, latest_checkpoint

RECIPE = {"steps": 200, "batch_size": 32, "lr": 1e-3, "warmup": 20, "schedule": "linear",
          "min_lr_ratio": 0.0, "weight_decay": 0.01, "grad_clip": 1.0, "eval_every": 100,
          "eval_batches": 10, "final_eval_batches": None, "ckpt_every": 0, "log_every": 10,
          "sample_tokens": 0, "max_minutes": None}


def finetune_config(run_dir, task="genre", overrides: list[str] | None = None,
                    pretrained: bool = True):
    """The RunConfig that fine-tunes ``run_dir`` on ``task``. ``pretrained=False``: the same
    model and tokenizer, randomly initialised (the no-pre-training control)."""
    from .trainer import CONFIG
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).exists():
        raise InputError(f"{run_dir} is not a tevo run folder (no {CONFIG})")
    ck = latest_checkpoint(run_dir)
    if ck is None:
        raise InputError(f"{run_dir} has no checkpoint to fine-tune from")
    name, kw = split_spec(task, "task")
    entry = TASKS.get(name, "task")
    labelled = [n for n in TASKS.names() if getattr(TASKS.get(n).obj, "needs_tokenizer", False)]
    if not getattr(entry.obj, "needs_tokenizer", False):
        raise ConfigError("task", name, labelled, why=f"{name!r} is not a labelled text task")
    t = TASKS.build(task, "task")
    src = load_config(run_dir / CONFIG)
    meta_path = run_dir / "data" / "meta.json"
    specials = []
    if meta_path.exists():
        sp = json.loads(meta_path.read_text()).get("specials", {})
        specials = [k for k, _ in sorted(sp.items(), key=lambda kv: kv[1])]
    if src.data.task is not None and not getattr(TASKS.get(
            split_spec(src.data.task, "data.task")[0]).obj, "needs_tokenizer", False):
        raise ConfigError("task", name, why=f"{run_dir} was trained on the synthetic task "
                                            f"{src.data.task!r}; its tokenizer has no text")
    cfg = to_dict(src)
    cfg["objective"] = {"name": "text_classification", "classes": t.num_classes}
    cfg["data"]["task"] = task
    cfg["data"]["extra"] = {**(cfg["data"].get("extra") or {}),
                            "tokenizer_from": str(run_dir), "specials": specials}
    tr = cfg["train"]
    tr.update(RECIPE)
    if tr.get("threads") is None:          # OpenMP spin-waits on a busy CPU: use idle cores
        tr["threads"] = "auto"
    tr["out_dir"] = str(run_dir / f"finetune-{name}")
    tr["extra"] = {k: v for k, v in (tr.get("extra") or {}).items() if k != "init_from"}
    if pretrained:
        tr["extra"]["init_from"] = str(ck / WEIGHTS)
    cfg["name"] = f"{src.name}-finetune-{name}"
    return load_config(cfg, overrides)


def finetune(run_dir, task="genre", overrides: list[str] | None = None,
             pretrained: bool = True) -> dict:
    """Fine-tune, then evaluate the test split; returns the summary (also in summary.json).
    ``pretrained=False`` trains the same model from a random initialisation instead."""
    from .trainer import SUMMARY, Trainer
    cfg = finetune_config(run_dir, task, overrides, pretrained)
    import torch

    from .evaluate import evaluate
    from .trainer import resolve_threads
    tr = Trainer(cfg)
    summary = tr.fit()
    if summary.get("stopped") in ("interrupted", "stop_at"):   # not trained: nothing to test
        return summary
    old, n = torch.get_num_threads(), resolve_threads(cfg.train.threads)
    if n and tr.device.type == "cpu":
        torch.set_num_threads(n)
    try:                                   # the whole test split, in larger batches
        r = evaluate(tr.model, tr.objective, tr.data, "test", max(tr.micro, 64), None,
                     tr.device, cfg.train.precision, tr.dist.rank, tr.dist.world)
    finally:
        torch.set_num_threads(old)
    summary["test_accuracy"] = r.get("accuracy")
    summary["test_loss"] = r.get("loss")
    task_obj = tr.data.task
    if hasattr(task_obj, "chance"):
        summary["chance"] = task_obj.chance("test")
    summary["pretrained"] = str(run_dir) if pretrained else None
    if tr.dist.is_main:
        (tr.run_dir / SUMMARY).write_text(json.dumps(summary, indent=1))
    return summary
