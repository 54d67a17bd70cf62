"""tevo — Transformer EVOlution: every mechanism of the Transformer family as a small,
registered, tested component, one config away."""
from __future__ import annotations

from .config import (DataConfig, ModelConfig, RunConfig, TrainConfig, load_config,  # noqa: F401
                     model_config)
from .errors import ConfigError, InputError, TevoError  # noqa: F401
from .nn.context import MixerContext  # noqa: F401
from .registry import REGISTRIES, find, registry  # noqa: F401

__version__ = "0.1.0"


def build_model(config=None, **overrides):
    """Build a model from a preset name, YAML path, dict, ModelConfig or RunConfig.

    >>> model = build_model("gpt2", n_layers=2, d_model=64)
    """
    from .registry import MODELS
    if isinstance(config, RunConfig):
        config = config.model
    cfg = model_config(config, **overrides)
    return MODELS.get(cfg.arch, "model.arch").obj(cfg)


def build(kind: str, spec, **dims):
    """Build one component: ``build("mixer", {"name": "softmax", "heads": 4}, d_model=64)``."""
    return registry(kind).build(spec, **dims)
