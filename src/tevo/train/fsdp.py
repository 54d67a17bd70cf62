"""Fully sharded data parallel training (``train.distributed=fsdp`` under ``torchrun``): torch's
own FSDP2 (``fully_shard``), one unit per transformer block plus the root (embeddings, head,
position tables, final norm). Parameters, gradients and optimiser state are sharded over the
ranks; each block's weights are gathered for its forward and backward and freed after.

Checkpoints stay those of a single process: the full (unsharded) weights and optimiser state
are gathered to rank 0 on the CPU (``torch.distributed.checkpoint.state_dict``) and written in
the same files, with the same keys, so an FSDP run is evaluated, sampled and resumed by one
process as well, and an FSDP run resumes from any checkpoint.
"""
from __future__ import annotations

import dataclasses

import torch
from safetensors.torch import load_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict,
                                                     set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from ..models.block import Block
from .checkpoint import _is_tied, state_dict_for_save

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def shard(model: nn.Module, device: torch.device, world: int, unused: bool = True) -> nn.Module:
    """Shard ``model`` in place (its parameters become DTensor shards): each block is one unit,
    the root holds the rest. Build the optimiser after this. ``unused``: reduce a zero gradient
    for a parameter this rank did not use (as DDP's ``find_unused_parameters``: e.g. experts a
    rank's tokens were not routed to), so every rank's reduce-scatter has the same size."""
    mesh = init_device_mesh(device.type, (world,))
    blocks = [(n, m) for n, m in model.named_modules() if isinstance(m, Block)]
    units: dict[int, set] = {}             # parameter → the blocks (or "" = root) holding it
    for name, p in model.named_parameters(remove_duplicate=False):
        units.setdefault(id(p), set()).add(
            next((b for b, _ in blocks if name.startswith(b + ".")), ""))
    if all(len(u) == 1 for u in units.values()):   # else (a parameter in two units): one unit
        for _, b in blocks:
            fully_shard(b, mesh=mesh)
            _write_through_context(b)
    fully_shard(model, mesh=mesh)
    model.set_reduce_scatter_unused_params(unused)
    return model


def _write_through_context(block: nn.Module) -> None:
    """FSDP2 hands a unit a copy of a dataclass argument that holds tensors requiring grad (its
    tensors hooked for backward). A block writes into its MixerContext (auxiliary losses, values
    carried to the next layer), so the copy's dict and list fields are made the original's, now
    holding the hooked tensors: reads see them, writes reach the caller."""
    calls = []

    def before(module, args, kwargs):          # runs before FSDP's pre-forward hook
        calls.append((args, kwargs))

    def after(module, args, kwargs):           # runs after it
        old_args, old_kwargs = calls.pop()
        pairs = list(zip(old_args, args)) + [(old_kwargs[k], kwargs[k]) for k in kwargs
                                             if k in old_kwargs]
        for old, new in pairs:
            if new is old or type(new) is not type(old) or not dataclasses.is_dataclass(old):
                continue
            for f in dataclasses.fields(old):
                o, n = getattr(old, f.name), getattr(new, f.name)
                if n is not o and isinstance(o, (dict, list)) and type(n) is type(o):
                    if isinstance(o, dict):
                        o.clear()
                        o.update(n)
                    else:
                        o[:] = n
                    setattr(new, f.name, o)

    block.register_forward_pre_hook(before, prepend=True, with_kwargs=True)
    block.register_forward_pre_hook(after, with_kwargs=True)


def _param_names(model: nn.Module, optimizer) -> list[str]:
    """The fully qualified name of each optimiser parameter, in the optimiser's order."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def full_weights(model: nn.Module) -> dict:
    """Collective: the unsharded weights on rank 0 (CPU), keyed and de-tied as a single
    process saves them; an empty dict on the other ranks."""
    model.reshard()                        # a forward without backward leaves the root whole
    full = get_model_state_dict(model, options=_FULL)
    return state_dict_for_save(model, full) if full else {}


def full_optimizer_state(model: nn.Module, optimizer) -> dict:
    """Collective: the unsharded optimiser state on rank 0 (CPU), in the format of a
    single-process ``optimizer.state_dict()`` (parameters numbered in order); {} elsewhere."""
    model.reshard()
    osd = get_optimizer_state_dict(model, optimizer, options=_FULL)
    if not osd:
        return {}
    index = {n: i for i, n in enumerate(_param_names(model, optimizer))}
    return {"state": {index[n]: s for n, s in osd["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]}
                             for g in osd["param_groups"]]}


def load_full_state(model: nn.Module, optimizer, weights_file, optim_state: dict) -> None:
    """Collective: load a checkpoint's full (single-process) weights and optimiser state into
    the sharded model and optimiser; every rank reads them and keeps its shard."""
    weights = load_file(str(weights_file))
    model.reshard()
    missing, unexpected = set_model_state_dict(
        model, weights, options=StateDictOptions(full_state_dict=True, strict=False))
    missing = [k for k in missing if not _is_tied(model, k, weights)]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint does not match the model: missing {missing[:5]}, "
                           f"unexpected {list(unexpected)[:5]}")
    names = _param_names(model, optimizer)
    osd = {"state": {names[int(i)]: s for i, s in optim_state["state"].items()},
           "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]}
                            for g in optim_state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, osd,
                             options=StateDictOptions(full_state_dict=True))
