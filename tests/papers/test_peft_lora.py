"""LoRA through the peft library on a tevo model: starts at the base model (B = 0), trains only
A and B, the unmerged weight is W_0 + (α/r)·B A (checked by hand), merged == unmerged (1e-5) and
the merged model is the base architecture; bad options are one line."""
from __future__ import annotations

import pytest
import torch

import tevo
from tevo.errors import ConfigError
from tevo.registry import PEFT

pytest.importorskip("peft")


def _model():
    torch.manual_seed(0)
    return tevo.build_model("gpt2", n_layers=2, d_model=16, vocab_size=30, max_len=32,
                            dropout=0.0, mixer={"name": "softmax", "heads": 2}).eval()


def test_lora_through_peft_trains_only_A_B_and_merges():
    model = _model()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 30, (2, 10))
    ref = model(ids).logits.detach()
    lo = PEFT.build({"name": "lora", "rank": 2, "alpha": 4.0}, "peft", model=model)
    torch.testing.assert_close(model(ids).logits, ref, atol=0, rtol=0)
    n = sum(p.numel() for p in lo.trainable_parameters())
    assert n == 2 * 2 * 2 * (16 + 16)                    # layers × {q, v} × r·(d_in + d_out)
    assert n == sum(p.numel() for p in model.parameters() if p.requires_grad)
    with torch.no_grad():
        for p in lo.trainable_parameters():
            p.normal_(0, 0.3)
    q = model.blocks.blocks[0].sublayers[0].q_proj
    A, B = q.lora_A["default"].weight, q.lora_B["default"].weight
    W0 = base["blocks.blocks.0.sublayers.0.q_proj.weight"]
    x = torch.randn(3, 16)
    with torch.no_grad():
        torch.testing.assert_close(q(x), x @ (W0 + 2.0 * B @ A).t() + q.base_layer.bias)
    unmerged = model(ids).logits.detach()
    assert not torch.allclose(unmerged, ref, atol=1e-4)
    merged = lo.merge()
    torch.testing.assert_close(merged(ids).logits, unmerged, atol=1e-5, rtol=0)
    assert set(merged.state_dict()) == set(base)


def test_lora_bad_options_are_one_line():
    for spec in ({"name": "lora", "rank": 0}, {"name": "lora", "alpha": -1.0},
                 {"name": "lora", "targets": ["nope"]}):
        with pytest.raises(ConfigError) as e:
            PEFT.build(spec, "peft", model=_model())
        assert "\n" not in str(e.value)
