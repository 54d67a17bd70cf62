"""Typed, validated configuration: YAML in and out, dotted overrides, nested component specs.

    cfg = load_config("gpt2", overrides=["model.n_layers=2", "model.mixer.heads=4"])
    model = build_model(cfg.model)

A component spec is a registry name or a mapping ``{name: ..., **options}``. Per-layer
overrides (hybrids) go in ``model.layers``: ``{"0,2": {mixer: {name: local, window: 16}}}``
or ranges ``"4-7"``. Every invalid value fails in ``validate`` with a one-line ConfigError.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

PRESET_DIR = Path(__file__).parent / "configs"


@dataclass
class ModelConfig:
    arch: str = "gpt"                     # MODELS registry: gpt | bert | transformer | ...
    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 4
    n_dec_layers: int | None = None        # encoder–decoder: decoder depth (default n_layers)
    max_len: int = 256                     # longest sequence (learned tables, presets)
    mixer: Any = field(default_factory=lambda: {"name": "softmax", "heads": 4})
    cross: Any = None                      # cross-attention mixer (encoder–decoder)
    ffn: Any = field(default_factory=lambda: {"name": "mlp", "mult": 4, "activation": "gelu"})
    norm: Any = "layernorm"
    residual: Any = "pre_ln"
    position: Any = "learned"
    layout: str = "a f"                    # sublayers of a block: a=mixer, c=cross, f=ffn
    dropout: float = 0.0
    tie_embeddings: bool = True
    embedding_norm: bool = False           # LayerNorm after the embeddings (BERT, BLOOM)
    final_norm: bool | None = None         # default: what the residual scheme needs
    causal: bool | None = None             # default: from the architecture
    layers: dict = field(default_factory=dict)
    init: Any = None                       # INITS registry spec applied after building
    init_std: float = 0.02
    n_segments: int = 0                    # segment (token type) embeddings, BERT: 2
    pad_id: int | None = None
    cache: bool | None = None              # True: require an incremental form in every layer
    memory: Any = None                     # MEMORIES registry spec wrapping the stack
    head_bias: bool = False
    embedding: Any = None                  # EMBEDDINGS spec replacing the token table (DeFINE)
    # image models (arch vit / metaformer); the data sets image_size, channels and vocab_size
    # (= the number of classes) when the trainer builds the model
    image_size: Any = None                 # [height, width] or an int
    patch_size: int = 4                    # square patches, must divide the image size
    channels: int = 3
    pool: str | None = None                # cls ([class] token) | mean; None: the arch's own
    stages: Any = None                     # hierarchical: [{n_layers, d_model, mixer?, ffn?}, ...]
    extra: dict = field(default_factory=dict)  # architecture-specific options


@dataclass
class DataConfig:
    corpus: str = "shakespeare"            # CORPORA registry name or a path
    path: str | None = None
    tokenizer: str = "bytes"               # bytes | chars | bpe
    vocab_size: int | None = None          # bpe: target vocabulary
    seq_len: int = 256
    task: Any = None                       # TASKS registry spec (synthetic tasks)
    extra: dict = field(default_factory=dict)


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 50
    schedule: str = "cosine"               # cosine | linear | constant
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    adam_eps: float = 1e-8                 # AdamW's ε: the floor under √v in the normalised update
    grad_clip: float = 1.0
    precision: str = "fp32"                # fp32 | bf16 | auto (bf16 where the hardware has it)
    compile: bool = False
    seed: int = 0
    eval_every: int = 250
    eval_batches: int = 20
    log_every: int = 10
    ckpt_every: int = 500
    keep_last: int = 2
    out_dir: str = "runs/default"
    device: str = "auto"
    sample_tokens: int = 200
    tensorboard: bool = False
    max_minutes: float | None = None       # wall-clock budget; the schedule then decays by time too
    final_eval_batches: int | None = None  # final evaluation: None = the whole validation split
    no_decay: list = field(default_factory=lambda: ["bias", "norm", "embedding"])
    progress: bool = True                  # rich progress bar on a terminal (plain lines otherwise)
    plot: bool = True                      # loss-curve PNG at the end when matplotlib is installed
    threads: Any = None                    # CPU threads: null = torch's default, N, or auto
    distributed: str = "ddp"               # ddp | fsdp: how torchrun's processes share the model
    extra: dict = field(default_factory=dict)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    objective: Any = "clm"
    name: str = "run"

    def to_dict(self) -> dict:
        return to_dict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------------------------
def to_dict(obj) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


def _from_dict(cls, data: dict, where: str):
    if data is None:
        return cls()
    if dataclasses.is_dataclass(data):
        return data
    if not isinstance(data, dict):
        raise ConfigError(where, data, why="expected a mapping")
    names = {f.name: f for f in fields(cls)}
    kw = {}
    for k, v in data.items():
        if k not in names:
            raise ConfigError(f"{where}.{k}" if where else k, k, sorted(names),
                              why=f"unknown field {k!r}")
        sub = names[k].type
        if k == "model" and cls is RunConfig:
            v = _from_dict(ModelConfig, v, "model")
        elif k == "data" and cls is RunConfig:
            v = _from_dict(DataConfig, v, "data")
        elif k == "train" and cls is RunConfig:
            v = _from_dict(TrainConfig, v, "train")
        kw[k] = v
    return cls(**kw)


def _parse_value(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested dict."""
    data = copy.deepcopy(data)
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError("override", ov, why=f"expected key=value, got {ov!r}")
        key, val = ov.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for i, p in enumerate(parts[:-1]):
            nxt = node.get(p)
            if isinstance(nxt, str):          # a component given by name becomes a mapping
                nxt = {"name": nxt}
            elif nxt is None:
                nxt = {}
            elif not isinstance(nxt, dict):
                nxt = to_dict(nxt)
                if not isinstance(nxt, dict):
                    raise ConfigError(".".join(parts[:i + 1]), nxt,
                                      why="cannot set a sub-key of a plain value")
            node[p] = nxt
            node = nxt
        node[parts[-1]] = _parse_value(val)
    return data


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def read_source(source) -> dict:
    """A dict from a dict, a config object, a YAML path or a preset name."""
    if source is None:
        return {}
    if dataclasses.is_dataclass(source):
        return to_dict(source)
    if isinstance(source, dict):
        return copy.deepcopy(source)
    s = str(source)
    path = Path(s)
    if not path.exists() and (PRESET_DIR / f"{s}.yaml").exists():
        path = PRESET_DIR / f"{s}.yaml"
    if not path.exists():
        raise ConfigError("config", s, preset_names(),
                          why=f"no config file or preset named {s!r}")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError("config", s, why="the YAML file must hold a mapping")
    base = data.pop("base", None)            # presets may extend another preset
    data.pop("paper_test", None)             # preset metadata read by `tevo catalog`, not config
    if base:
        data = _merge(read_source(base), data)
    return data


def _merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("mixer", "ffn"):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_config(source=None, overrides: list[str] | None = None) -> RunConfig:
    """RunConfig from a preset name, YAML path, dict or object, plus dotted overrides."""
    data = read_source(source)
    if data and "model" not in data and any(f.name == k for f in fields(ModelConfig) for k in data):
        data = {"model": data}               # a bare model config
    data = apply_overrides(data, overrides)
    cfg = _from_dict(RunConfig, data, "")
    validate(cfg)
    return cfg


def model_config(source=None, overrides: list[str] | None = None, **kw) -> ModelConfig:
    """A ModelConfig from a preset, path, dict or object (model section or bare), validated."""
    if isinstance(source, ModelConfig):
        data = to_dict(source)
    else:
        data = read_source(source)
        if "model" in data and isinstance(data["model"], dict):
            data = data["model"]
    data.update(kw)
    data = apply_overrides(data, overrides)
    cfg = _from_dict(ModelConfig, data, "model")
    validate_model(cfg)
    return cfg


def save_config(cfg: RunConfig, path) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(cfg.to_yaml())
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
def validate(cfg: RunConfig) -> None:
    validate_model(cfg.model)
    t = cfg.train
    if t.precision not in ("fp32", "bf16", "auto"):
        raise ConfigError("train.precision", t.precision, ["fp32", "bf16", "auto"])
    if t.schedule not in ("cosine", "linear", "constant"):
        raise ConfigError("train.schedule", t.schedule, ["cosine", "linear", "constant"])
    if t.distributed not in ("ddp", "fsdp"):
        raise ConfigError("train.distributed", t.distributed, ["ddp", "fsdp"])
    for k in ("steps", "batch_size", "grad_accum"):
        if int(getattr(t, k)) < 1:
            raise ConfigError(f"train.{k}", getattr(t, k), why="must be >= 1")
    if cfg.data.seq_len < 1:
        raise ConfigError("data.seq_len", cfg.data.seq_len, why="must be >= 1")
    try:                                   # YAML reads 1e-8 (no dot) as a string
        eps = None if isinstance(t.adam_eps, bool) else float(t.adam_eps)
    except (TypeError, ValueError):
        eps = None
    if eps is None or not 0 < eps < 1:
        raise ConfigError("train.adam_eps", t.adam_eps, why="expected a number in (0, 1)")
    t.adam_eps = eps


def parse_layer_keys(key, n_layers: int) -> list[int]:
    out = []
    for part in str(key).split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-")
            out += list(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    for i in out:
        if not 0 <= i < n_layers:
            raise ConfigError("model.layers", key, why=f"layer {i} out of range 0..{n_layers - 1}")
    return out


def layer_specs(cfg: ModelConfig, n_layers: int | None = None) -> list[dict]:
    """The resolved per-layer component specs (base + per-layer overrides)."""
    n = cfg.n_layers if n_layers is None else n_layers
    base = {"mixer": cfg.mixer, "ffn": cfg.ffn, "norm": cfg.norm, "residual": cfg.residual,
            "layout": cfg.layout, "cross": cfg.cross}
    specs = [copy.deepcopy(base) for _ in range(n)]
    for key, over in (cfg.layers or {}).items():
        if not isinstance(over, dict):
            raise ConfigError(f"model.layers.{key}", over, why="expected a mapping of overrides")
        for k in over:
            if k not in base:
                raise ConfigError(f"model.layers.{key}.{k}", k, sorted(base),
                                  why=f"unknown per-layer field {k!r}")
        for i in parse_layer_keys(key, n):
            specs[i].update(copy.deepcopy(over))
    return specs


def validate_model(cfg: ModelConfig) -> None:
    """Check names, options and combinations; raise a one-line ConfigError on the first problem."""
    from .registry import FFNS, INITS, MEMORIES, MIXERS, MODELS, NORMS, POSITIONS, RESIDUALS
    from .registry import check_kwargs, split_spec

    arch = MODELS.get(cfg.arch, "model.arch")
    for k in ("vocab_size", "d_model", "n_layers", "max_len"):
        v = getattr(cfg, k)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"model.{k}", v, why=f"must be a positive integer, got {v!r}")
    if not 0.0 <= float(cfg.dropout) < 1.0:
        raise ConfigError("model.dropout", cfg.dropout, why="must be in [0, 1)")
    causal = cfg.causal if cfg.causal is not None else getattr(arch.obj, "default_causal", True)

    pos_name, pos_kw = split_spec(cfg.position, "model.position")
    pos_entry = POSITIONS.get(pos_name, "model.position")
    check_kwargs(pos_entry.obj, pos_kw, f"model.position({pos_name})")
    if getattr(pos_entry.obj, "causal_only", False) and not causal:
        raise ConfigError("model.position", pos_name,
                          why=f"{pos_name!r} carries no order in a bidirectional model; "
                              f"choose an explicit encoding",
                          choices=[n for n in POSITIONS.names()
                                   if not getattr(POSITIONS.get(n).obj, "causal_only", False)])
    pos_hooks = set(getattr(pos_entry.obj, "hooks", ()))

    n_dec = cfg.n_dec_layers or cfg.n_layers
    stacks = [(cfg.n_layers, causal)]
    if getattr(arch.obj, "has_decoder", False):
        stacks = [(cfg.n_layers, False), (n_dec, True)]
    for n_layers, stack_causal in stacks:
        for i, spec in enumerate(layer_specs(cfg, n_layers)):
            where = f"model.layers[{i}]" if cfg.layers else "model"
            for kind_field, reg in (("mixer", MIXERS), ("ffn", FFNS), ("norm", NORMS),
                                    ("residual", RESIDUALS)):
                if kind_field == "ffn" and spec[kind_field] is None:
                    continue
                name, kw = split_spec(spec[kind_field], f"{where}.{kind_field}")
                entry = reg.get(name, f"{where}.{kind_field}")
                check_kwargs(entry.obj, kw, f"{where}.{kind_field}({name})")
            mname, mkw = split_spec(spec["mixer"], f"{where}.mixer")
            sup = MIXERS.get(mname).supports
            _check_layout(spec["layout"], where)
            if sup is None:
                continue
            _check_grid_fit(sup, mname, getattr(arch.obj, "input_kind", "tokens") == "image",
                            f"{where}.mixer")
            if stack_causal and not sup.causal:
                raise ConfigError(f"{where}.mixer", mname,
                                  [n for n in MIXERS.names() if MIXERS.get(n).supports.causal],
                                  why=f"mixer {mname!r} has no causal form, needed by a causal model")
            if not stack_causal and not sup.bidirectional:
                raise ConfigError(f"{where}.mixer", mname,
                                  [n for n in MIXERS.names()
                                   if MIXERS.get(n).supports.bidirectional],
                                  why=f"mixer {mname!r} is causal-only, the model is bidirectional")
            if not pos_hooks <= set(sup.positions):
                ok = [n for n in POSITIONS.names()
                      if set(getattr(POSITIONS.get(n).obj, "hooks", ())) <= set(sup.positions)]
                raise ConfigError("model.position", pos_name, ok,
                                  why=f"position {pos_name!r} needs hooks {sorted(pos_hooks)} that "
                                      f"mixer {mname!r} does not accept")
            if cfg.cache and not sup.cache:
                raise ConfigError(f"{where}.mixer", mname,
                                  [n for n in MIXERS.names() if MIXERS.get(n).supports.cache],
                                  why=f"cache requested but mixer {mname!r} has no recurrent form")
    if cfg.embedding is not None:
        from .registry import EMBEDDINGS
        name, kw = split_spec(cfg.embedding, "model.embedding")
        check_kwargs(EMBEDDINGS.get(name, "model.embedding").obj, kw, f"model.embedding({name})")
        if cfg.tie_embeddings:
            raise ConfigError("model.tie_embeddings", True,
                              why=f"embedding {name!r} has no V×d table to tie; set "
                                  f"model.tie_embeddings=false")
    if cfg.init is not None:
        name, kw = split_spec(cfg.init, "model.init")
        check_kwargs(INITS.get(name, "model.init").obj, kw, f"model.init({name})")
    if cfg.memory is not None:
        name, kw = split_spec(cfg.memory, "model.memory")
        mem = MEMORIES.get(name, "model.memory").obj
        check_kwargs(mem, kw, f"model.memory({name})")
        if hasattr(mem, "check_config"):          # combinations the memory cannot wrap
            mem.check_config(cfg, **kw)
    if hasattr(arch.obj, "check_config"):          # architecture-specific fields (image models)
        arch.obj.check_config(cfg)
    mixer_name, mixer_kw = split_spec(cfg.mixer, "model.mixer")
    heads = mixer_kw.get("heads")
    if heads and "head_dim" not in mixer_kw and cfg.d_model % int(heads):
        raise ConfigError("model.mixer.heads", heads,
                          why=f"d_model={cfg.d_model} is not divisible by heads={heads}")


def _check_grid_fit(sup, name: str, image: bool, where: str) -> None:
    """An image model needs mixers that read the 2-D grid or are order-free; a text model
    needs mixers that work on a 1-D sequence."""
    from .registry import MIXERS
    if image and not sup.image:
        raise ConfigError(where, name, [n for n in MIXERS.names() if MIXERS.get(n).supports.image],
                          why=f"mixer {name!r} reads a 1-D sequence; an image model needs one "
                              f"that reads the 2-D grid or is order-free")
    if not image and not sup.text:
        raise ConfigError(where, name, [n for n in MIXERS.names() if MIXERS.get(n).supports.text
                                        and MIXERS.get(n).supports.grid],
                          why=f"mixer {name!r} needs a 2-D token grid (an image model, "
                              f"model.arch=vit); grid mixers that also take text")


SUBLAYERS = {"a": "self mixer", "c": "cross-attention", "f": "feed-forward",
             "p": "parallel mixer + feed-forward"}


def _check_layout(layout: str, where: str) -> None:
    toks = layout.split()
    if not toks:
        raise ConfigError(f"{where}.layout", layout, why="empty layout")
    for t in toks:
        if t not in SUBLAYERS:
            raise ConfigError(f"{where}.layout", t, SUBLAYERS, why=f"unknown sublayer {t!r}")
