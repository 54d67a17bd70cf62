"""Conformance for every registered model and every shipped preset (at tiny sizes)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import tevo
from tiny import cached_logits
from tevo.config import preset_names, read_source
from tevo.registry import MODELS

TINY = {"d_model": 32, "n_layers": 2, "max_len": 64, "vocab_size": 97, "dropout": 0.0}


def tiny_model(source):
    data = read_source(source)
    m = dict(data.get("model", data))
    m.update(TINY)
    spec = m.get("mixer")
    if isinstance(spec, dict) and "heads" in spec:
        m["mixer"] = {**spec, "heads": 4}
        if "kv_heads" in spec:
            m["mixer"]["kv_heads"] = 2 if spec["kv_heads"] > 1 else 1
    pos = m.get("position")
    if isinstance(pos, dict) and "max_len" in pos:
        m["position"] = {**pos, "max_len": 64}
    if m.get("n_dec_layers"):
        m["n_dec_layers"] = 2
    if "ffn" in m and isinstance(m["ffn"], dict) and "d_ff" in m["ffn"]:
        m["ffn"] = {**m["ffn"], "d_ff": 64}
    m["layers"] = {}
    if isinstance(m.get("extra"), dict) and "latents" in m["extra"]:     # Perceiver (AR)
        m["extra"] = {**m["extra"], "latents": 4}
    if getattr(MODELS.get(m.get("arch", "gpt")).obj, "input_kind", "tokens") == "image":
        m.setdefault("image_size", 8)          # image presets take their size from the data
        m.setdefault("channels", 1)
    return tevo.build_model(m).eval()


def model_inputs(model, n=10):
    if getattr(type(model), "input_kind", "tokens") == "image":     # a batch of images
        from tevo.models.vision import image_hw
        return (torch.randn(2, model.cfg.channels, *image_hw(model.cfg)),), {}
    ids = torch.randint(0, TINY["vocab_size"], (2, n))
    mask = torch.ones(2, n, dtype=torch.bool)
    if type(model).has_decoder:
        return (ids, ids[:, :7]), {}
    return (ids,), {"attention_mask": mask}


def presets():
    return [pytest.param(p, id=p) for p in preset_names()]


def arch_sources():
    return [pytest.param({"arch": n, **MODELS.get(n).tiny}, id=f"arch:{n}") for n in MODELS.names()]


@pytest.mark.parametrize("source", presets() + arch_sources())
def test_builds_runs_and_gets_gradients(source):
    model = tiny_model(source).train()
    args, kw = model_inputs(model)
    out = model(*args, **kw)
    assert torch.isfinite(out.logits).all()
    loss = out.logits.float().logsumexp(-1).mean() + out.aux_loss
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None
               and not n.startswith(("nsp", "pooler"))]
    assert not missing, f"no gradient reaches {missing}"


@pytest.mark.parametrize("source", presets() + arch_sources())
def test_safetensors_round_trip_gives_identical_outputs(source, tmp_path):
    model = tiny_model(source)
    args, kw = model_inputs(model)
    ref = model(*args, **kw).logits
    from tevo.train.checkpoint import state_dict_for_save
    save_file(state_dict_for_save(model), tmp_path / "w.safetensors")
    torch.manual_seed(123)
    other = tiny_model(source)
    other.load_state_dict(load_file(tmp_path / "w.safetensors"), strict=False)
    torch.testing.assert_close(other(*args, **kw).logits, ref, atol=0, rtol=0)


@pytest.mark.parametrize("source", presets())
def test_causal_presets_cached_decode_equals_full(source):
    model = tiny_model(source)
    if type(model).has_decoder or not getattr(model, "causal", False) or not hasattr(model, "init_state"):
        pytest.skip("not a decoder-only causal model")
    from tevo.registry import MIXERS
    if not all(MIXERS.get(b.sublayers[0].registry_name).supports.cache
               for b in model.blocks.blocks if hasattr(b.sublayers[0], "registry_name")):
        pytest.skip("a layer has no incremental form")
    ids = torch.randint(0, TINY["vocab_size"], (2, 12))
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[0, :2] = False
    full = model(ids, attention_mask=mask).logits
    cached = cached_logits(model, ids, mask, prefill=6)
    torch.testing.assert_close(cached[mask], full[mask], atol=1e-5, rtol=1e-5)
