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
from .options import check_fields, option

PRESET_DIR = Path(__file__).parent / "configs"


@dataclass
class ModelConfig:
    arch: str = "gpt"                     # MODELS registry: gpt | bert | transformer | ...
    vocab_size: int = option(256, ge=1)
    d_model: int = option(128, ge=1)
    n_layers: int = option(4, ge=1)
    n_dec_layers: int | None = option(None, ge=1)   # encoder–decoder depth (default n_layers)
    max_len: int = option(256, ge=1)  # longest sequence (learned tables, presets)
    mixer: Any = field(default_factory=lambda: {"name": "softmax", "heads": 4})
    cross: Any = None                      # cross-attention mixer (encoder–decoder)
    ffn: Any = field(default_factory=lambda: {"name": "mlp", "mult": 4, "activation": "gelu"})
    norm: Any = "layernorm"
    residual: Any = "pre_ln"
    position: Any = "learned"
    layout: str = option("a f", type=str)   # sublayers of a block: a=mixer, c=cross, f=ffn
    dropout: float = option(0.0, ge=0, lt=1)
    tie_embeddings: bool = True
    embedding_norm: bool = False           # LayerNorm after the embeddings (BERT, BLOOM)
    final_norm: bool | None = None         # default: what the residual scheme needs
    causal: bool | None = None             # default: from the architecture
    layers: dict = field(default_factory=dict)
    init: Any = None                       # INITS registry spec applied after building
    init_std: float = option(0.02, ge=0)
    n_segments: int = option(0, ge=0)  # segment (token type) embeddings, BERT: 2
    pad_id: int | None = option(None, ge=0)
    cache: bool | None = None              # True: require an incremental form in every layer
    memory: Any = None                     # MEMORIES registry spec wrapping the stack
    head_bias: bool = False
    embedding: Any = None                  # EMBEDDINGS spec replacing the token table (DeFINE)
    # image models (arch vit / metaformer); the data sets image_size, channels and vocab_size
    # (= the number of classes) when the trainer builds the model
    image_size: Any = None                 # [height, width] or an int
    patch_size: int = option(4, ge=1)  # square patches, must divide the image size
    channels: int = option(3, ge=1)
    pool: str | None = None                # cls ([class] token) | mean; None: the arch's own
    stages: Any = None                     # hierarchical: [{n_layers, d_model, mixer?, ffn?}, ...]
    extra: dict = field(default_factory=dict)  # architecture-specific options


@dataclass
class DataConfig:
    corpus: str = "shakespeare"            # CORPORA registry name or a path
    path: str | None = option(None, type=str | None)
    tokenizer: str = "bytes"               # bytes | chars | bpe
    vocab_size: int | None = option(None, ge=2)  # bpe: target vocabulary
    seq_len: int = option(256, ge=1)
    task: Any = None                       # TASKS registry spec (synthetic tasks)
    extra: dict = field(default_factory=dict)


@dataclass
class TrainConfig:
    steps: int = option(1000, ge=1)
    batch_size: int = option(32, ge=1)
    grad_accum: int = option(1, ge=1)
    lr: float = option(3e-3, gt=0)
    min_lr_ratio: float = option(0.1, ge=0, le=1, doc="the final learning rate over the peak")
    warmup: int = option(50, ge=0)
    schedule: str = option("cosine", choices=("cosine", "linear", "constant"))
    weight_decay: float = option(0.1, ge=0)
    betas: tuple = (0.9, 0.95)
    adam_eps: float = option(1e-8, gt=0, lt=1)     # AdamW's ε: the floor under √v
    grad_clip: float = option(1.0, ge=0, doc="0 = no clipping")
    precision: str = option("fp32", choices=("fp32", "bf16", "auto"))  # auto: bf16 where native
    compile: bool = False
    seed: int = option(0, ge=0)
    eval_every: int = option(250, ge=0, doc="0 = only the final evaluation")
    eval_batches: int = option(20, ge=0, doc="0 = the whole split")
    log_every: int = option(10, ge=1)
    ckpt_every: int = option(500, ge=0, doc="0 = only at the end")
    keep_last: int = option(2, ge=0, doc="0 = keep every checkpoint")
    out_dir: str = option("runs/default", type=str)
    device: str = option("auto", type=str)
    sample_tokens: int = option(200, ge=0)
    tensorboard: bool = False
    max_minutes: float | None = option(None, gt=0)  # time budget (the schedule follows it)
    budget_clock: str = option("wall", choices=("wall", "cpu"),
                               doc="what max_minutes counts: wall-clock time, or the process's "
                                   "CPU time (core-seconds: equal compute on a shared machine)")
    final_eval_batches: int | None = option(None, ge=1, doc="null = the whole split")
    no_decay: list = field(default_factory=lambda: ["bias", "norm", "embedding"])
    progress: bool = True                  # rich progress bar on a terminal (plain lines otherwise)
    plot: bool = True                      # loss-curve PNG at the end when matplotlib is installed
    threads: Any = None                    # CPU threads: null = torch's default, N, or auto
    distributed: str = option("ddp", choices=("ddp", "fsdp"))  # how torchrun's ranks share it
    extra: dict = field(default_factory=dict)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    objective: Any = "clm"
    name: str = option("run", type=str)

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
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        what = getattr(e, "problem", None) or type(e).__name__
        raise ConfigError("config", s, why=f"{path} is not valid YAML: {what}{where}") from None
    except OSError as e:
        raise ConfigError("config", s, why=f"cannot read {path}: {e.strerror}") from None
    if not isinstance(data, dict):
        raise ConfigError("config", s, why=f"{path} must hold a mapping of fields, got "
                                           f"{type(data).__name__}")
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
    """Every field's type and range (declared with ``option`` next to the field), then the
    names, options and combinations of the model; a one-line ConfigError on the first problem,
    before anything is built or written."""
    for section in ("data", "train"):
        sub = getattr(cfg, section)
        if not dataclasses.is_dataclass(sub):
            raise ConfigError(section, sub, why="expected a mapping")
        check_fields(sub, f"{section}.")
    check_fields(cfg, "")
    betas = cfg.train.betas
    if not isinstance(betas, (list, tuple)) or len(betas) != 2 or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1
            for b in betas):
        raise ConfigError("train.betas", betas, why=f"expected two numbers in [0, 1), got "
                                                    f"{betas!r}")
    validate_model(cfg.model)


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

    if not isinstance(cfg, ModelConfig):
        raise ConfigError("model", cfg, why="expected a mapping")
    check_fields(cfg, "model.")
    arch = MODELS.get(cfg.arch, "model.arch")
    causal = cfg.causal if cfg.causal is not None else getattr(arch.obj, "default_causal", True)

    pos_name, pos_kw = split_spec(cfg.position, "model.position")
    pos_entry = POSITIONS.get(pos_name, "model.position")
    check_kwargs(pos_entry.obj, pos_kw, f"model.position({pos_name})")
    image = getattr(arch.obj, "input_kind", "tokens") == "image"    # order from the 2-D grid
    if getattr(pos_entry.obj, "causal_only", False) and not causal and not image:
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
