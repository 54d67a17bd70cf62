"""One Block and one stack for every architecture.

A block is a sequence of sublayers given by a layout string, each wrapped by its residual
scheme: ``"a f"`` (mixer then FFN, the Transformer block), ``"a c f"`` (decoder with
cross-attention), ``"p"`` (parallel mixer + FFN on one norm, GPT-J), ``"f"`` or ``"a"`` alone.
An FFN with ``stateful = True`` (RWKV's channel mix reads the previous token) is called like a
mixer, ``y, state = ffn(h, ctx, state)``, and its state is part of the block's.
"""
from __future__ import annotations

import copy

from torch import Tensor, nn

from ..config import ModelConfig, layer_specs
from ..nn.context import MixerContext
from ..registry import FFNS, MIXERS, RESIDUALS, split_spec


def build_mixer(spec, d_model: int, cfg: ModelConfig, causal: bool, layer: int, n_layers: int,
                field_name: str = "model.mixer", **extra):
    return MIXERS.build(spec, field_name, d_model=d_model, max_len=cfg.max_len, causal=causal,
                        layer=layer, n_layers=n_layers, dropout=cfg.dropout, **extra)


def build_ffn(spec, d_model: int, cfg: ModelConfig, layer: int, n_layers: int):
    return FFNS.build(spec, "model.ffn", d_model=d_model, dropout=cfg.dropout, layer=layer,
                      n_layers=n_layers, max_len=cfg.max_len)


def _cross_spec(spec_cross, spec_mixer):
    if spec_cross is not None:
        name, kw = split_spec(spec_cross, "model.cross")
    else:
        _, mkw = split_spec(spec_mixer, "model.mixer")
        name, kw = "softmax", {k: mkw[k] for k in ("heads", "bias") if k in mkw}
    kw = dict(kw, cross=True)
    return {"name": name, **kw}


class Block(nn.Module):
    """residual(norm, sublayer) for each sublayer of the layout."""

    def __init__(self, spec: dict, cfg: ModelConfig, layer: int, n_layers: int, causal: bool,
                 layout: str | None = None, mixer_dims: dict | None = None):
        super().__init__()
        d = cfg.d_model
        self.layout = (layout or spec["layout"]).split()
        self.causal = causal
        self.sublayers = nn.ModuleList()
        self.residuals = nn.ModuleList()
        md = mixer_dims or {}          # sizes the model knows, e.g. an image stage's grid
        for t in self.layout:
            if t == "a":
                sub = build_mixer(spec["mixer"], d, cfg, causal, layer, n_layers, **md)
            elif t == "c":
                sub = build_mixer(_cross_spec(spec.get("cross"), spec["mixer"]), d, cfg, False,
                                  layer, n_layers, "model.cross")
            elif t == "f":
                sub = build_ffn(spec["ffn"], d, cfg, layer, n_layers)
            elif t == "p":
                sub = ParallelMixerFFN(build_mixer(spec["mixer"], d, cfg, causal, layer, n_layers,
                                                   **md),
                                       build_ffn(spec["ffn"], d, cfg, layer, n_layers))
                if getattr(sub.ffn, "stateful", False):
                    from ..errors import ConfigError
                    raise ConfigError("model.layout", "p", why="a stateful FFN (token shift) "
                                      "needs its own sublayer: use 'a f'")
            else:
                raise ValueError(t)
            self.sublayers.append(sub)
            self.residuals.append(RESIDUALS.build(
                spec["residual"], "model.residual", d_model=d, norm=spec["norm"],
                dropout=cfg.dropout, layer=layer, n_layers=n_layers,
                sublayer=len(self.residuals), n_sublayers=len(self.layout)))

    @property
    def final_norm(self) -> bool:
        return self.residuals[0].final_norm

    def init_state(self, batch: int, device=None, dtype=None) -> dict:
        st = {}
        for i, (t, sub) in enumerate(zip(self.layout, self.sublayers)):
            if t in ("a", "c"):
                st[i] = sub.init_state(batch, device, dtype)
            elif t == "p":
                st[i] = sub.mixer.init_state(batch, device, dtype)
            elif getattr(sub, "stateful", False):          # FFN with a state (token shift)
                st[i] = sub.init_state(batch, device, dtype)
        return st

    def forward(self, x: Tensor, ctx: MixerContext, state: dict | None = None):
        new_state = None if state is None else {}
        x0 = x
        if hasattr(ctx.pos, "for_layer"):                # positions with per-layer parameters
            layer_pos = ctx.pos.for_layer(ctx.layer)
            if layer_pos is not ctx.pos:
                ctx = ctx.replace(pos=layer_pos)
        for i, (t, sub, res) in enumerate(zip(self.layout, self.sublayers, self.residuals)):
            if t in ("a", "c", "p") or getattr(sub, "stateful", False):
                sctx = ctx.replace(causal=self.causal) if t != "c" else ctx
                s_in = None if state is None else state.get(i)
                out = {}

                def fn(h, sub=sub, sctx=sctx, s_in=s_in, out=out):
                    y, out["state"] = sub(h, sctx, s_in)
                    return y
                x = res(x, fn, block_input=x0)
                if new_state is not None:
                    new_state[i] = out.get("state")
            else:
                if getattr(sub, "uses_ctx", False):
                    x = res(x, lambda h, sub=sub: sub(h, ctx), block_input=x0)
                else:
                    x = res(x, sub, block_input=x0)
        return x, new_state


class ParallelMixerFFN(nn.Module):
    """y = Mixer(h) + FFN(h) on the same normalised input (GPT-J / PaLM parallel block)."""

    def __init__(self, mixer: nn.Module, ffn: nn.Module):
        super().__init__()
        self.mixer, self.ffn = mixer, ffn

    def forward(self, h: Tensor, ctx: MixerContext, state=None):
        y, state = self.mixer(h, ctx, state)
        f = self.ffn(h, ctx) if getattr(self.ffn, "uses_ctx", False) else self.ffn(h)
        return y + f, state


class BlockStack(nn.Module):
    """L blocks, each from its resolved per-layer spec; state is a list of block states."""

    def __init__(self, cfg: ModelConfig, causal: bool, n_layers: int | None = None,
                 layout: str | None = None, mixer_dims: dict | None = None):
        super().__init__()
        n = cfg.n_layers if n_layers is None else n_layers
        specs = layer_specs(cfg, n)
        self.blocks = nn.ModuleList(Block(specs[i], cfg, i, n, causal, layout, mixer_dims)
                                    for i in range(n))

    def __len__(self):
        return len(self.blocks)

    @property
    def final_norm(self) -> bool:
        return self.blocks[-1].final_norm

    def init_state(self, batch: int, device=None, dtype=None) -> list:
        return [b.init_state(batch, device, dtype) for b in self.blocks]

    def forward(self, x: Tensor, ctx: MixerContext, state: list | None = None):
        new = None if state is None else []
        for i, blk in enumerate(self.blocks):
            ctx.layer, ctx.n_layers = i, len(self.blocks)
            x, s = blk(x, ctx, None if state is None else state[i])
            if new is not None:
                new.append(s)
        return x, new
