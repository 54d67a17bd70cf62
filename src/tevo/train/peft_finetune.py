"""``tevo finetune RUN --peft NAME``: parameter-efficient fine-tuning of a pre-trained language
model run (PaFi, HiWi, MEFT, LoRA through the ``peft`` library) with the one Trainer.

    tevo finetune runs/default --peft pafi peft.sparsity=0.01 data.corpus=stdlib train.steps=200

The new run (``RUN/peft-<name>``) starts from the run's latest weights, freezes them, applies
the method (``tevo.registry.PEFT``) and trains only its parameters on the objective of the
base run (next-token prediction) and the data given by the overrides. Its checkpoints hold only
the trainable delta (``model.safetensors``: the method's named tensors) and the optimiser
state of those; ``peft.json`` records the method, its options, the base run's path and the
SHA-256 of the base weights it started from. :func:`load_peft_model` rebuilds the fine-tuned
model from the base run and the delta, and refuses a base whose weights are not those.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..config import load_config, to_dict
from ..errors import ConfigError, InputError
from ..registry import PEFT, split_spec
from .checkpoint import WEIGHTS, latest_checkpoint, save_checkpoint
from .trainer import CONFIG, Trainer

META = "peft.json"
RECIPE = {"steps": 200, "lr": 1e-3, "warmup": 20, "schedule": "linear", "min_lr_ratio": 0.0,
          "weight_decay": 0.0, "grad_clip": 1.0, "eval_every": 100, "eval_batches": 10,
          "ckpt_every": 0, "log_every": 10, "sample_tokens": 0, "max_minutes": None}
FIXED_TOKENIZERS = ("bytes", "hf")          # the same ids on any text: safe on a new corpus


def weights_hash(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _base_weights(run_dir: Path) -> Path:
    if not (run_dir / CONFIG).exists():
        raise InputError(f"{run_dir} is not a tevo run folder (no {CONFIG})")
    ck = latest_checkpoint(run_dir)
    if ck is None:
        raise InputError(f"{run_dir} has no checkpoint to fine-tune from")
    return ck / WEIGHTS


def peft_config(run_dir, method, overrides: list[str] | None = None):
    """The RunConfig of a PEFT fine-tune of ``run_dir`` and the checked method spec."""
    run_dir = Path(run_dir)
    weights = _base_weights(run_dir)
    name, kw = split_spec(method, "peft")
    entry = PEFT.get(name, "--peft")
    if name == "reversible":
        raise ConfigError("--peft", name, [n for n in PEFT.names() if n != "reversible"],
                          why="reversible is a training-memory layout, not a fine-tuning delta")
    src = load_config(run_dir / CONFIG)
    if split_spec(src.objective, "objective")[0] != "clm":
        raise ConfigError("--peft", name, why=f"{run_dir} was trained with objective "
                                              f"{src.objective!r}; --peft fine-tunes a causal LM")
    cfg = to_dict(src)
    tr = cfg["train"]
    tr.update(RECIPE)
    tr["out_dir"] = str(run_dir / f"peft-{name}")
    tr["extra"] = {**(tr.get("extra") or {}), "init_from": str(weights)}
    cfg["name"] = f"{src.name}-peft-{name}"
    out = load_config(cfg, overrides)
    if (out.data.corpus != src.data.corpus or out.data.path != src.data.path) and \
            src.data.tokenizer not in FIXED_TOKENIZERS:
        raise ConfigError("data.corpus", out.data.corpus, why=f"the base run fitted a "
                          f"{src.data.tokenizer!r} tokenizer on its own corpus; fine-tuning on "
                          f"other text needs a fixed one ({', '.join(FIXED_TOKENIZERS)})")
    if out.train.compile or out.train.distributed not in (None, "none", "ddp"):
        raise ConfigError("train.compile", out.train.compile, [False],
                          why="--peft trains an uncompiled single-process model")
    return out, (name, entry, kw), weights


class PeftTrainer(Trainer):
    """The Trainer on a frozen base with a PEFT method applied; checkpoints hold the delta."""

    def __init__(self, cfg, method, base_weights: Path, base_run: Path):
        super().__init__(cfg)
        name, entry, kw = method
        if self.dist.enabled:
            raise ConfigError("--peft", name, why="--peft fine-tunes in one process")
        self.peft = PEFT.build({"name": name, **kw}, "--peft", model=self.model)
        self.peft_name, self.peft_options = name, kw
        from .optim import build_optimizer
        self.optimizer = build_optimizer(self.model, cfg.train, self.device.type)
        self.fwd = self.model
        self.meta = {"method": name, "options": kw, "base_run": str(base_run.resolve()),
                     "base_weights": str(base_weights.resolve()),
                     "base_sha256": weights_hash(base_weights),
                     "trainable_params": int(sum(p.numel() for p in
                                                 self.peft.trainable_parameters()))}
        if self.dist.is_main:
            (self.run_dir / META).write_text(json.dumps(self.meta, indent=1))

    def save(self):
        state = self._state()
        self.saved_step = self.step
        delta = {k: v.detach().cpu().contiguous() for k, v in self.peft.delta_state().items()}
        return save_checkpoint(self.run_dir, self.step, self.model, state,
                               self.cfg.train.keep_last, delta)


def peft_finetune(run_dir, method, overrides: list[str] | None = None) -> dict:
    """Fine-tune ``run_dir`` with PEFT ``method`` (a name or {name: ..., options}); returns
    the Trainer's summary with the trainable parameter count and the base's hash."""
    cfg, m, weights = peft_config(run_dir, method, overrides)
    tr = PeftTrainer(cfg, m, weights, Path(run_dir))
    summary = tr.fit()
    summary.update({"peft": tr.peft_name, "trainable_params": tr.meta["trainable_params"],
                    "total_params": int(sum(p.numel() for p in tr.model.parameters())),
                    "base_run": str(run_dir), "base_sha256": tr.meta["base_sha256"]})
    from .trainer import SUMMARY
    (tr.run_dir / SUMMARY).write_text(json.dumps(summary, indent=1))
    return summary


def load_peft_model(peft_run, base_run=None, device: str = "cpu", merge: bool = True):
    """The fine-tuned model: the base run's model with the delta of ``peft_run`` loaded (and
    merged into plain weights where the method merges). ``base_run``: where the base is now
    (default: the path recorded). A base whose weights are not the recorded ones is refused
    before anything is loaded."""
    from safetensors.torch import load_file

    from .run import load_run
    peft_run = Path(peft_run)
    if not (peft_run / META).exists():
        raise InputError(f"{peft_run} is not a --peft fine-tuning run (no {META})")
    meta = json.loads((peft_run / META).read_text())
    base = Path(base_run or meta["base_run"])
    weights = _base_weights(base)
    digest = weights_hash(weights)
    if digest != meta["base_sha256"]:
        raise InputError(f"{peft_run}'s delta was trained on base weights sha256 "
                         f"{meta['base_sha256'][:12]}…, but {weights} has {digest[:12]}…: "
                         f"not the same base run")
    ck = latest_checkpoint(peft_run)
    if ck is None:
        raise InputError(f"{peft_run} has no checkpoint")
    delta = load_file(str(ck / WEIGHTS))
    run = load_run(base, device)
    model = run.model
    p = PEFT.build({"name": meta["method"], **meta["options"]}, "peft", model=model)
    p.load_delta({k: v.to(device) for k, v in delta.items()})
    if merge and hasattr(p, "merge"):
        model = p.merge()
    model.eval()
    return model, run, p

