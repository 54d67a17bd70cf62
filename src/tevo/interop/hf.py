"""Hugging Face transformers ⇄ tevo: the same model, the same numbers.

    model = from_hf("path/to/hf_dir")                 # or an in-memory transformers model
    cfg, weights = hf_to_tevo(hf_model)               # the tevo config + state dict
    to_hf(tevo_model, "out_dir")                      # GPT-2- and Llama-style models back out

A converter is one ``HFFamily`` per architecture (``hf_gpt.py``, ``hf_bert.py``, ...): it maps
the HF config to a tevo ``ModelConfig`` and the HF state dict to tevo's, refusing every HF option
tevo cannot reproduce with an ``UnsupportedHFOption`` that names it. Nothing is silent: an HF
weight with no place in the tevo model is an error, and a tevo weight that the HF checkpoint does
not hold (a pooler absent from ``BertForMaskedLM``) is allowed only for the heads a family
declares optional, with a warning listing them.

``transformers`` is an optional extra (``pip install tevo[hf]``): it is imported inside the
functions that need it, never at module import.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import ModelConfig, model_config
from ..errors import TevoError

# modules holding the families; each registers its converters with ``register`` on import
FAMILY_MODULES = ("tevo.interop.hf_gpt", "tevo.interop.hf_bert", "tevo.interop.hf_llama",
                  "tevo.interop.hf_neox", "tevo.interop.hf_gptj", "tevo.interop.hf_t5",
                  "tevo.interop.hf_transfo_xl", "tevo.interop.hf_rwkv",
                  "tevo.interop.hf_mamba")


class ConversionError(TevoError, ValueError):
    """A model that cannot be converted as asked (unknown architecture, missing weights, ...)."""


class UnsupportedHFOption(ConversionError):
    """An HF config option whose value tevo cannot reproduce exactly."""

    def __init__(self, model_type: str, option: str, value: Any, supported: Any = None,
                 why: str | None = None):
        msg = f"{model_type}: config option {option}={value!r} is not supported by tevo"
        if supported is not None:
            msg += f" (supported: {supported})"
        if why:
            msg += f": {why}"
        super().__init__(msg)
        self.model_type, self.option, self.value = model_type, option, value


def _need_transformers():
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ConversionError("Hugging Face interop needs the optional dependency "
                              "'transformers' (pip install 'tevo[hf]')") from e
    return transformers


# --------------------------------------------------------------------------------------------
# Reading the HF side


def read_hf(source) -> tuple[Any, dict[str, Tensor]]:
    """(HF config, state dict) from an in-memory model or a local directory holding
    ``config.json`` and safetensors weights (one file or an index of shards)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not (path / "config.json").is_file():
            raise ConversionError(f"{path}: no config.json (expected a Hugging Face model "
                                  f"directory written by save_pretrained)")
        try:
            with open(path / "config.json") as f:
                raw = json.load(f)
        except (OSError, ValueError) as e:
            raise ConversionError(f"{path / 'config.json'}: not a readable JSON file ({e})") \
                from None
        family_for(raw.get("model_type") if isinstance(raw, dict) else None)  # before weights
        transformers = _need_transformers()
        cfg = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
        return cfg, read_safetensors_dir(path)
    if hasattr(source, "config") and hasattr(source, "state_dict"):
        sd = dict(source.state_dict())
        _load_families()
        fam = FAMILIES.get(getattr(source.config, "model_type", None))
        return source.config, (sd if fam is None else fam.live_state_dict(source, sd))
    raise ConversionError(f"cannot read a Hugging Face model from {type(source).__name__}: "
                          f"give a transformers model or a directory")


def read_safetensors_dir(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file
    single = path / "model.safetensors"
    index = path / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        sd: dict[str, Tensor] = {}
        for s in shards:
            sd.update(load_file(str(path / s)))
        return sd
    if any(path.glob("*.bin")) or any(path.glob("*.pt")):
        raise ConversionError(f"{path}: only safetensors weights are read (pickled .bin files "
                              f"can run code); re-save with save_pretrained(..., "
                              f"safe_serialization=True)")
    raise ConversionError(f"{path}: no model.safetensors or model.safetensors.index.json")


class Weights:
    """The HF state dict with the base-model prefix stripped; records what was used.

    ``take(k)`` returns a tensor and marks it used (missing → ConversionError naming it);
    ``get(k)`` is the same for optional pieces (None when absent); ``drop(regex)`` marks buffers
    that carry no weights (causal-mask tables, rotary caches) as used.
    """

    def __init__(self, sd: dict[str, Tensor], prefixes: tuple[str, ...] = ()):
        self.sd: dict[str, Tensor] = {}
        for k, v in sd.items():
            for p in prefixes:
                if k.startswith(p):
                    k = k[len(p):]
                    break
            self.sd[k] = v
        self.used: set[str] = set()

    def __contains__(self, k: str) -> bool:
        return k in self.sd

    def take(self, k: str) -> Tensor:
        if k not in self.sd:
            raise ConversionError(f"the Hugging Face weights have no {k!r}")
        self.used.add(k)
        return self.sd[k]

    def get(self, k: str) -> Tensor | None:
        return self.take(k) if k in self.sd else None

    def drop(self, pattern: str) -> None:
        rx = re.compile(pattern)
        self.used |= {k for k in self.sd if rx.fullmatch(k)}

    def unused(self) -> list[str]:
        return [k for k in self.sd if k not in self.used]


# --------------------------------------------------------------------------------------------
# Families


class HFFamily:
    """One architecture's mapping. Subclasses set the class attributes and override
    ``config`` (HF config → tevo ModelConfig dict) and ``weights`` (→ tevo state dict);
    exportable ones also ``export_problems``, ``export_config`` and ``export_weights``."""

    model_types: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()          # base-model prefixes of the HF keys
    optional: tuple[str, ...] = ()          # regexes of tevo keys a checkpoint may lack (heads)
    hf_class: str | None = None             # transformers class written by ``to_hf``

    def config(self, c) -> dict:
        raise NotImplementedError

    def weights(self, c, w: Weights, cfg: ModelConfig) -> dict[str, Tensor]:
        raise NotImplementedError

    def live_state_dict(self, model: nn.Module, sd: dict[str, Tensor]) -> dict[str, Tensor]:
        """The checkpoint's weights from an in-memory model's state dict (default: as they are;
        RWKV undoes the rescaling transformers applies in place in eval mode)."""
        return sd

    def refine(self, c, w: Weights, data: dict) -> None:
        """Adjust the config dict from the weights themselves (e.g. whether a head is tied)."""

    def wrap(self, c, model: nn.Module, w: Weights) -> nn.Module:
        """A module around the tevo model for heads tevo does not have (default: none)."""
        return model

    # -- export ---------------------------------------------------------------------------
    def export_problems(self, cfg: ModelConfig) -> list[str]:
        return ["no export"]

    def export_config(self, cfg: ModelConfig, model: nn.Module):
        raise NotImplementedError

    def export_weights(self, model: nn.Module, cfg: ModelConfig) -> dict[str, Tensor]:
        raise NotImplementedError


FAMILIES: dict[str, HFFamily] = {}


def register(cls):
    """Class decorator: register a family under each of its HF ``model_type`` names."""
    inst = cls()
    for t in cls.model_types:
        FAMILIES[t] = inst
    return cls


_loaded = False


def _load_families() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for m in FAMILY_MODULES:
        try:
            importlib.import_module(m)
        except ModuleNotFoundError as e:
            if e.name != m:
                raise


def supported_model_types() -> list[str]:
    _load_families()
    return sorted(FAMILIES)


def family_for(hf_config) -> HFFamily:
    """The family converting ``hf_config`` (an HF config, or its ``model_type`` string)."""
    _load_families()
    t = hf_config if isinstance(hf_config, str) or hf_config is None else \
        getattr(hf_config, "model_type", None)
    if t not in FAMILIES:
        raise ConversionError(f"no tevo converter for Hugging Face model_type {t!r} "
                              f"(supported: {', '.join(sorted(FAMILIES))})")
    return FAMILIES[t]


# -- helpers the families share ---------------------------------------------------------------

# HF activation names (transformers.activations.ACT2FN) → tevo activations computing the same
# function. gelu_new, gelu_pytorch_tanh and gelu_fast are all the tanh approximation.
ACTIVATIONS = {"gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh",
               "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "relu": "relu",
               "silu": "silu", "swish": "silu", "mish": "mish", "tanh": "tanh",
               "sigmoid": "sigmoid", "linear": "identity", "relu2": "relu2",
               "quick_gelu": "quick_gelu", "laplace": "laplace"}
ACTIVATIONS_BACK = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu",
                    "swish": "silu", "mish": "mish", "tanh": "tanh", "sigmoid": "sigmoid",
                    "identity": "linear", "relu2": "relu2", "squared_relu": "relu2"}


def activation(model_type: str, option: str, name) -> str:
    from ..registry import ACTIVATIONS as REG
    tevo = ACTIVATIONS.get(name) if isinstance(name, str) else None
    if tevo is None or tevo not in REG:
        ok = sorted(k for k, v in ACTIVATIONS.items() if v in REG)
        raise UnsupportedHFOption(model_type, option, name, ", ".join(ok))
    return tevo


def require(c, option: str, ok, supported=None, why: str | None = None, default=None):
    """Raise UnsupportedHFOption unless ``ok(value)`` (or value == ok when not callable)."""
    v = getattr(c, option, default)
    good = ok(v) if callable(ok) else v == ok
    if not good:
        raise UnsupportedHFOption(c.model_type, option, v,
                                  supported if supported is not None else
                                  (None if callable(ok) else ok), why)
    return v


def rope_parameters(c) -> dict:
    """The rotary settings of an HF config, across transformers 4.x (rope_theta, rope_scaling)
    and 5.x (rope_parameters)."""
    rp = getattr(c, "rope_parameters", None)
    if isinstance(rp, dict) and rp:
        out = dict(rp)
    else:
        out = dict(getattr(c, "rope_scaling", None) or {})
        for name in ("rope_theta", "rotary_emb_base"):          # GPT-NeoX 4.x: rotary_emb_base
            if getattr(c, name, None) is not None:
                out.setdefault("rope_theta", getattr(c, name))
        for name in ("partial_rotary_factor", "rotary_pct"):     # GPT-NeoX 4.x: rotary_pct
            if getattr(c, name, None) is not None:
                out.setdefault("partial_rotary_factor", getattr(c, name))
    out.setdefault("rope_type", out.pop("type", "default") if "type" in out else "default")
    return out


def head_dim_of(c, d: int, heads: int) -> int:
    hd = getattr(c, "head_dim", None)
    return int(hd) if hd else d // heads


def block_key(i: int, stack: str = "blocks") -> str:
    """tevo key prefix of block i of a stack (``blocks``, ``encoder`` or ``decoder``)."""
    return f"{stack}.blocks.{i}."


HF_TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def hf_tokens(c) -> dict:
    """The special token ids of an HF config (None where unset), kept in ``extra.hf``."""
    return {k: getattr(c, k, None) for k in HF_TOKEN_IDS}


def exported_tokens(cfg: ModelConfig) -> dict:
    """The special token ids a converted model kept in ``extra.hf``, for an exported config."""
    toks = dict((cfg.extra or {}).get("hf", {}))
    return {k: toks.get(k) for k in HF_TOKEN_IDS}


def linear(w: Weights, hf: str, tevo: str, sd: dict) -> None:
    """HF ``{hf}.weight`` (and ``{hf}.bias`` when there is one) → tevo ``{tevo}.weight``/``.bias``
    in ``sd``; the same for a LayerNorm's weight and bias."""
    sd[f"{tevo}.weight"] = w.take(f"{hf}.weight")
    if f"{hf}.bias" in w:
        sd[f"{tevo}.bias"] = w.take(f"{hf}.bias")


def plain_stack_problems(cfg: ModelConfig, causal: bool = False) -> list[str]:
    """Export problems shared by the plain HF decoders (GPT-2, Llama): a layout other than
    "a f" and tevo options their blocks have no place for (with ``causal``: a bidirectional
    model too)."""
    p = []
    if cfg.layout.split() != ["a", "f"]:
        p.append(f"layout {cfg.layout!r} (needs 'a f')")
    checks = [("layers", bool(cfg.layers)), ("embedding_norm", cfg.embedding_norm),
              ("final_norm=False", cfg.final_norm is False), ("head_bias", cfg.head_bias),
              ("n_segments", cfg.n_segments), ("memory", cfg.memory is not None)]
    if causal:
        checks.append(("causal=False", cfg.causal is False))
    for k, bad in checks:
        if bad:
            p.append(f"{k} is set")
    return p


def lm_head(c, w: Weights, sd: dict, cfg: ModelConfig, embeddings: str) -> None:
    """``lm_head.weight`` → tevo ``head.weight`` for an untied head (which must be there); with
    tied embeddings only checks that a stored ``lm_head.weight`` equals ``sd["embed.weight"]``
    (``embeddings`` names those in the error)."""
    lm = w.get("lm_head.weight")
    if cfg.tie_embeddings:
        if lm is not None and not lm.equal(sd["embed.weight"]):
            raise ConversionError(f"{c.model_type}: tie_word_embeddings=True but lm_head.weight "
                                  f"differs from {embeddings}")
    elif lm is None:
        raise ConversionError(f"{c.model_type}: the weights have no lm_head.weight")
    else:
        sd["head.weight"] = lm


# --------------------------------------------------------------------------------------------
# Import


@dataclass
class Conversion:
    """What ``hf_to_tevo`` produced: the tevo config, its state dict, the family and the HF
    config, plus the tevo keys left at their initial values (absent heads)."""

    config: ModelConfig
    state_dict: dict[str, Tensor]
    family: HFFamily
    hf_config: Any
    weights: Weights
    missing: list[str] = field(default_factory=list)


def hf_to_tevo(source, overrides: list[str] | None = None) -> Conversion:
    """Convert a transformers model (or a local HF directory) to a tevo config + state dict."""
    hf_cfg, sd = read_hf(source)
    fam = family_for(hf_cfg)
    data = fam.config(hf_cfg)
    w = Weights(sd, fam.prefixes)
    fam.refine(hf_cfg, w, data)
    # a mixer override also reaches the per-layer mixers (Qwen2's sliding-window layers)
    mixer_ov = [o[len("mixer."):] for o in overrides or [] if o.startswith("mixer.")]
    overrides = list(overrides or []) + [
        f"layers.{key}.mixer.{o}" for key, over in (data.get("layers") or {}).items()
        if isinstance(over, dict) and isinstance(over.get("mixer"), dict) for o in mixer_ov]
    cfg = model_config(data, overrides)
    tsd = fam.weights(hf_cfg, w, cfg)
    return Conversion(cfg, tsd, fam, hf_cfg, w)


def from_hf(source, overrides: list[str] | None = None, dtype: torch.dtype | None = None,
            warn: bool = True) -> nn.Module:
    """The tevo model (eval mode) equivalent to a transformers model or local HF directory.

    ``overrides`` are dotted config overrides applied to the converted config (e.g.
    ``["mixer.impl=eager"]``); they must keep the architecture the same.
    """
    conv = hf_to_tevo(source, overrides)
    model = build_tevo(conv.config)
    conv.missing = load_converted(model, conv.state_dict, conv.family.optional)
    model = conv.family.wrap(conv.hf_config, model, conv.weights)
    left = conv.weights.unused()
    if left:
        raise ConversionError(f"{conv.hf_config.model_type}: {len(left)} Hugging Face weight(s) "
                              f"have no place in the tevo model: {', '.join(left[:8])}")
    if conv.missing and warn:
        warnings.warn(f"{conv.hf_config.model_type}: the checkpoint has no weights for "
                      f"{', '.join(conv.missing[:8])}"
                      f"{' ...' if len(conv.missing) > 8 else ''}; they keep their initial values",
                      stacklevel=2)
    if dtype is not None:
        model = model.to(dtype)
    model.hf_conversion = {"model_type": conv.hf_config.model_type, "missing": conv.missing}
    return model.eval()


def build_tevo(cfg: ModelConfig) -> nn.Module:
    from ..registry import MODELS
    return MODELS.get(cfg.arch, "model.arch").obj(cfg)


def load_converted(model: nn.Module, sd: dict[str, Tensor], optional=()) -> list[str]:
    """Load a converted state dict; every tevo weight must be given, except tied copies and
    keys matching ``optional``. Returns the optional keys that were not given."""
    own = model.state_dict()
    unexpected = [k for k in sd if k not in own]
    if unexpected:
        raise ConversionError(f"converter produced keys the tevo model does not have: "
                              f"{', '.join(unexpected[:8])}")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ConversionError(f"{k}: converted shape {tuple(v.shape)} != tevo shape "
                                  f"{tuple(own[k].shape)}")
    params = dict(model.named_parameters(remove_duplicate=False))
    groups: dict[int, list[str]] = {}
    for k, p in params.items():
        groups.setdefault(id(p), []).append(k)
    missing = []
    for k in own:
        if k in sd:
            continue
        if k in params and any(o in sd for o in groups[id(params[k])]):
            continue                                   # tied to a loaded parameter
        missing.append(k)
    bad = [k for k in missing if not any(re.fullmatch(p, k) for p in optional)]
    if bad:
        raise ConversionError(f"the conversion gives no value for tevo weight(s) "
                              f"{', '.join(bad[:8])}")
    with torch.no_grad():
        for k, v in sd.items():
            own[k].copy_(v.to(own[k].dtype))
    return missing


# --------------------------------------------------------------------------------------------
# Export


def _export_family(cfg: ModelConfig) -> HFFamily:
    _load_families()
    reasons = []
    seen = set()
    for fam in FAMILIES.values():
        if id(fam) in seen or fam.hf_class is None:
            continue
        seen.add(id(fam))
        probs = fam.export_problems(cfg)
        if not probs:
            return fam
        reasons.append(f"{fam.model_types[0]}: {'; '.join(probs)}")
    raise ConversionError("no Hugging Face architecture reproduces this tevo model — "
                          + " | ".join(reasons))


def tevo_to_hf(model: nn.Module):
    """(transformers model, family) equivalent to a tevo model, built in memory."""
    transformers = _need_transformers()
    cfg = model.cfg
    fam = _export_family(cfg)
    hf_cfg = fam.export_config(cfg, model)
    cls = getattr(transformers, fam.hf_class)
    hf = cls(hf_cfg)
    sd = fam.export_weights(model, cfg)
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    tied = set()
    if getattr(hf_cfg, "tie_word_embeddings", False):
        tied = {k for k in missing if k.endswith("lm_head.weight")}
    missing = [k for k in missing if k not in tied and not _is_buffer(hf, k)]
    if missing or unexpected:
        raise ConversionError(f"export to {fam.hf_class} does not match: missing "
                              f"{list(missing)[:5]}, unexpected {list(unexpected)[:5]}")
    if tied:
        hf.tie_weights()
    return hf.eval(), fam


def _is_buffer(m: nn.Module, key: str) -> bool:
    return key in dict(m.named_buffers())


def to_hf(model: nn.Module, out_dir, dtype: torch.dtype | None = None) -> Path:
    """Write a tevo model as a Hugging Face directory (config.json + model.safetensors) that
    ``transformers.AutoModelForCausalLM.from_pretrained`` loads."""
    hf, _ = tevo_to_hf(model)
    if dtype is not None:
        hf = hf.to(dtype)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out), safe_serialization=True)
    return out
