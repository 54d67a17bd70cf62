"""Universal Transformer and Adaptive Computation Time: a weight-shared stack applied
recurrently in depth, each position halting on its own.

Papers: Universal Transformers (Dehghani et al., 2019), §2.1–2.2; Adaptive Computation Time for
Recurrent Neural Networks (Graves, 2016), §2, eq. 3–14.
    s^n = T(s^{n-1} [+ timestep signal P_n])          T: the shared stack (L layers, causal)
    h^n = σ(W_h s^n + b_h)                             halting unit, per position
    N   = min{n' : Σ_{n ≤ n'} h^n ≥ 1 − ε}  (capped at max_steps)
    R   = 1 − Σ_{n < N} h^n                            remainder
    p^n = h^n (n < N),  R (n = N),  0 (n > N)          so Σ_n p^n = 1
    y   = Σ_n p^n s^n,     loss += τ · mean over positions of ρ = N + R     (ponder cost)
``universal`` (UT) adds a sinusoidal timestep signal before every step and can run without
halting (``halting: none``: exactly max_steps steps, y = s^max_steps); ``act`` is Graves's
mechanism on the model's stack with no timestep signal. Options live in ``model.extra``:
max_steps (int ≥ 1, default 4), act_epsilon ε (0 < ε < 1, default 0.01), ponder_weight τ (≥ 0,
default 0.01), halting_bias (initial b_h, default 1.0 as in the UT code), halting (universal
only: act | none).

As in the UT code every position keeps being transformed after it halts (its later states get
weight 0), so halted positions still serve as keys to the others; a full pass stops once every
position halted, which changes nothing. With a cache (decoding) all max_steps run, each step
keeping its own KV cache, so cached decoding equals the full pass.

Positions enter as the model configures them (at the input, or in every attention for rope and
relative encodings). Complexity: max_steps × the stack's cost (time), one cache per step.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..config import ModelConfig, model_config
from ..errors import ConfigError
from ..nn.context import MixerContext
from ..registry import MODELS
from .block import BlockStack
from .common import (ModelOutput, build_norm, build_position, check_ids, extend_mask,
                     init_weights, token_positions)

OPTIONS = ("max_steps", "act_epsilon", "ponder_weight", "halting_bias", "halting")


def _number(extra: dict, key: str, default, lo, hi=None, integer=False, open_lo=False):
    v = extra.get(key, default)
    ok = (not isinstance(v, bool) and isinstance(v, int if integer else (int, float))
          and math.isfinite(v) and (v > lo if open_lo else v >= lo) and (hi is None or v < hi))
    if not ok:
        rng = f"{'>' if open_lo else '>='} {lo}" + (f" and < {hi}" if hi is not None else "")
        raise ConfigError(f"model.extra.{key}", v,
                          why=f"{'an integer' if integer else 'a number'} {rng}")
    return v


class PonderLM(nn.Module):
    """Decoder-only LM whose block stack is applied up to max_steps times with per-position ACT
    halting (shared weights across steps)."""

    default_causal = True
    has_decoder = False
    timestep_signal = False
    halting_choices = ("act",)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        ex = dict(cfg.extra or {})
        name = getattr(type(self), "registry_name", "act")
        unknown = sorted(set(ex) - set(OPTIONS))
        if unknown:
            raise ConfigError(f"model.extra.{unknown[0]}", ex[unknown[0]], list(OPTIONS),
                              why=f"not an option of arch {name!r}")
        self.max_steps = int(_number(ex, "max_steps", 4, 1, integer=True))
        self.eps = float(_number(ex, "act_epsilon", 0.01, 0.0, 1.0, open_lo=True))
        self.tau = float(_number(ex, "ponder_weight", 0.01, 0.0))
        b0 = float(_number(ex, "halting_bias", 1.0, -math.inf))
        self.halting = ex.get("halting", "act")
        if self.halting not in self.halting_choices:
            raise ConfigError("model.extra.halting", self.halting, list(self.halting_choices))
        d = cfg.d_model
        self.causal = cfg.causal if cfg.causal is not None else True
        self.embed = nn.Embedding(cfg.vocab_size, d)
        self.pos = build_position(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = BlockStack(cfg, self.causal)                    # T, shared over steps
        use_final = cfg.final_norm if cfg.final_norm is not None else self.blocks.final_norm
        self.norm = build_norm(cfg) if use_final else None
        self.head = nn.Linear(d, cfg.vocab_size, bias=cfg.head_bias)
        self.halt = nn.Linear(d, 1) if self.halting == "act" else None
        init_weights(self, cfg, cfg.n_layers * self.max_steps)
        if self.halt is not None:
            nn.init.zeros_(self.halt.weight)
            nn.init.constant_(self.halt.bias, b0)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        self.memory = None

    def timestep(self, n: int, device, dtype) -> Tensor:
        """P_n: the sinusoid of step n over d channels (UT §2.1), (d,)."""
        d = self.cfg.d_model
        i = torch.arange(0, d, 2, device=device, dtype=torch.float32)
        ang = n / torch.pow(10000.0, i / d)
        out = torch.zeros(d, device=device)
        out[0::2], out[1::2] = torch.sin(ang), torch.cos(ang[: d // 2])
        return out.to(dtype)

    def init_state(self, batch: int, device=None, dtype=None) -> dict:
        return {"steps": [self.blocks.init_state(batch, device, dtype)
                          for _ in range(self.max_steps)], "mask": None, "length": 0}

    def embed_tokens(self, input_ids: Tensor, positions: Tensor) -> Tensor:
        x = self.embed(input_ids)
        x = self.pos.embed(x, positions) if "input" in self.pos.hooks else x
        return self.drop(x)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                state: dict | None = None, positions: Tensor | None = None,
                return_hidden: bool = False) -> ModelOutput:
        """input_ids (B, n) -> logits (B, n, V); extra["halting"]: per-step halting h (B, n, S),
        weights p (B, n, S), N and R (B, n) for the steps S that ran."""
        check_ids(input_ids, self.cfg.vocab_size)
        B, n = input_ids.shape
        dev = input_ids.device
        full_mask = extend_mask(state, attention_mask, B, n, dev)
        if positions is None:
            positions = token_positions(state, full_mask, B, n, dev)
        s = self.embed_tokens(input_ids, positions)                   # (B, n, d) = s^0
        ctx = MixerContext(causal=self.causal, key_padding_mask=full_mask, positions=positions,
                           pos=self.pos)
        cum = torch.zeros(B, n, device=dev)                             # Σ h over n < N
        halted = torch.zeros(B, n, dtype=torch.bool, device=dev)
        N = torch.zeros(B, n, device=dev)
        R = torch.zeros(B, n, device=dev)
        y = torch.zeros_like(s)
        hs, ps, new_steps = [], [], []
        for step in range(1, self.max_steps + 1):
            if self.timestep_signal:
                s = s + self.timestep(step, dev, s.dtype)
            s, st = self.blocks(s, ctx, None if state is None else state["steps"][step - 1])
            new_steps.append(st)
            last = step == self.max_steps
            if self.halt is None:                                       # fixed depth
                p = torch.full((B, n), float(last), device=dev)
                h = p
            else:
                h = torch.sigmoid(self.halt(s).float()).squeeze(-1)     # (B, n)
                stop = ~halted & ((cum + h >= 1 - self.eps) | last)
                p = torch.where(stop, 1 - cum, torch.where(halted, torch.zeros_like(h), h))
                R = torch.where(stop, 1 - cum, R)
                N = torch.where(stop, torch.full_like(N, step), N)
                cum = cum + torch.where(halted | stop, torch.zeros_like(h), h)
                halted = halted | stop
            y = y + p[..., None].to(s.dtype) * s
            hs.append(h)
            ps.append(p)
            if state is None and self.halt is not None and bool(halted.all()):
                break                                                   # later weights are 0
        aux = 0.0
        if self.halt is not None:
            rho = N + R                                                 # (B, n) ponder cost
            q = ctx.query_mask(n)
            rho_mean = rho.mean() if q is None else (rho * q).sum() / q.sum().clamp(min=1)
            ctx.add_aux("ponder", rho_mean, self.tau)
            aux = ctx.aux_loss()
        else:
            aux = ctx.aux_loss()
            N = torch.full((B, n), float(self.max_steps), device=dev)
        x = self.norm(y) if self.norm is not None else y
        logits = self.head(x)
        new_state = None
        if state is not None:
            new_state = {"steps": new_steps, "mask": full_mask,
                         "length": state.get("length", 0) + n}
        halting = {"h": torch.stack(hs, -1), "p": torch.stack(ps, -1), "N": N, "R": R}
        return ModelOutput(logits, new_state, aux, x if return_hidden else None,
                           {"aux": ctx.aux, "halting": halting})

    @classmethod
    def from_config(cls, source=None, **overrides):
        return cls(model_config(source, **overrides))


@MODELS.register(
    "act", paper="Adaptive Computation Time for Recurrent Neural Networks (Graves, 2016)",
    equation="eq. 3–14: h^n = σ(W_h s^n + b_h); N = min{n: Σ h ≥ 1−ε}; R = 1 − Σ_{n<N} h^n; "
             "y = Σ p^n s^n; loss += τ (N + R)",
    complexity=("≤ max_steps × the stack's cost", "one cache per step"),
    test="tests/papers/test_models_universal.py::"
         "test_halting_weights_sum_to_one_and_match_a_loop_of_graves_algorithm",
    tiny={"n_layers": 1, "mixer": {"name": "softmax", "heads": 2}, "position": "rope",
          "extra": {"max_steps": 3, "halting_bias": -1.0}})
class ACTLM(PonderLM):
    """Graves's adaptive computation time over the model's weight-shared block stack: a
    halting unit, the remainder and the ponder cost."""


@MODELS.register(
    "universal", paper="Universal Transformers (Dehghani et al., 2019)",
    equation="§2: h^t = Transition(A(h^{t-1} + P^t)), shared weights over t; ACT halting per "
             "position (Graves 2016)",
    complexity=("≤ max_steps × the stack's cost", "one cache per step"),
    test="tests/papers/test_models_universal.py::"
         "test_a_threshold_stopping_at_step_k_equals_a_k_layer_weight_shared_stack",
    tiny={"n_layers": 1, "mixer": {"name": "softmax", "heads": 2}, "position": "rope",
          "extra": {"max_steps": 3, "halting_bias": -1.0}})
class UniversalTransformer(PonderLM):
    """Universal Transformer: a shared block applied recurrently in depth with a timestep
    signal, halting per position by ACT (or a fixed number of steps)."""

    timestep_signal = True
    halting_choices = ("act", "none")
