"""PaFi and HiWi (Liao et al., 2023): PaFi trains exactly the smallest-magnitude weights and
nothing else; HiWi's unmerged weight is W + ReLU(W A) B; merged == unmerged (logits 1e-5) and the
merged model is the base architecture (same parameters, so the same latency); bad options are
one line."""
from __future__ import annotations

import math

import pytest
import torch

import tevo
from tevo.errors import ConfigError
from tevo.peft.no_latency import HiWi, PaFi
from tevo.registry import PEFT


def _model():
    torch.manual_seed(0)
    return tevo.build_model("gpt2", n_layers=2, d_model=16, vocab_size=30, max_len=32,
                            dropout=0.0, mixer={"name": "softmax", "heads": 2}).eval()


def _train(model, params, steps=4):
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    g = torch.Generator().manual_seed(3)
    for _ in range(steps):
        ids = torch.randint(0, 30, (2, 12), generator=g)
        logits = model(ids).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 30),
                                                 ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_pafi_trains_exactly_the_smallest_magnitude_weights():
    assert PEFT.get("pafi").obj is PaFi
    model = _model()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 30, (2, 10))
    ref = model(ids).logits.detach()
    lin = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
           and n.startswith("blocks.")]
    # brute force: every block projection weight entry, ranked by |w| (stable: by position)
    entries = []
    for n in lin:
        w = base[n + ".weight"].reshape(-1)
        entries += [(abs(float(w[i])), n, i) for i in range(w.numel())]
    k = math.ceil(0.1 * len(entries))
    order = sorted(range(len(entries)), key=lambda j: (entries[j][0], j))
    want = {(entries[j][1], entries[j][2]) for j in order[:k]}

    p = PEFT.build({"name": "pafi", "sparsity": 0.1}, "peft", model=model)
    assert p.n_trainable == k == sum(t.numel() for t in p.trainable_parameters())
    assert sum(q.numel() for q in model.parameters() if q.requires_grad) == k
    torch.testing.assert_close(model(ids).logits, ref, atol=0, rtol=0)      # Δ = 0 at start
    _train(model, p.trainable_parameters())
    unmerged = model(ids).logits.detach()
    assert not torch.allclose(unmerged, ref, atol=1e-4)
    merged = p.merge()
    torch.testing.assert_close(merged(ids).logits, unmerged, atol=1e-5, rtol=0)
    sd = merged.state_dict()
    assert set(sd) == set(base)                                     # the base architecture
    changed = set()
    for name, v in sd.items():
        d = (v != base[name]).reshape(-1).nonzero().view(-1).tolist()
        if name.endswith(".weight") and name[:-7] in lin:
            changed |= {(name[:-7], i) for i in d}
        else:
            assert not d, name                                  # nothing else moved
    assert changed and changed <= want and len(changed) > k // 2


def test_hiwi_merged_equals_unmerged_and_is_the_base_architecture():
    assert PEFT.get("hiwi").obj is HiWi
    model = _model()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    n_base = sum(q.numel() for q in model.parameters())
    ids = torch.randint(0, 30, (2, 10))
    ref = model(ids).logits.detach()
    h = PEFT.build({"name": "hiwi", "rank": 3}, "peft", model=model)
    torch.testing.assert_close(model(ids).logits, ref, atol=0, rtol=0)      # B = 0 at start
    assert sum(q.numel() for q in h.trainable_parameters()) == 2 * (2 * 64 * 3)
    _train(model, h.trainable_parameters())
    fc1 = model.blocks.blocks[0].sublayers[1].fc1
    ad = fc1.parametrizations.weight[0].adapter
    W1, b1 = base["blocks.blocks.0.sublayers.1.fc1.weight"].t(), \
        base["blocks.blocks.0.sublayers.1.fc1.bias"]
    with torch.no_grad():                                        # the paper's equation, by hand
        torch.testing.assert_close(fc1.weight.t(), W1 + torch.relu(W1 @ ad.A) @ ad.B)
        torch.testing.assert_close(fc1.bias, b1 + torch.relu(b1 @ ad.A) @ ad.B)
    unmerged = model(ids).logits.detach()
    assert not torch.allclose(unmerged, ref, atol=1e-4)
    merged = h.merge()
    torch.testing.assert_close(merged(ids).logits, unmerged, atol=1e-5, rtol=0)
    assert set(merged.state_dict()) == set(base)
    assert sum(q.numel() for q in merged.parameters()) == n_base


def test_delta_round_trip_and_bad_options_are_one_line():
    a, b = _model(), _model()
    pa, pb = PaFi(a, 0.05), PaFi(b, 0.05)
    _train(a, pa.trainable_parameters(), 2)
    pb.load_delta(pa.delta_state())
    ids = torch.randint(0, 30, (1, 8))
    torch.testing.assert_close(a(ids).logits, b(ids).logits, atol=0, rtol=0)
    c = _model()
    with torch.no_grad():
        c.blocks.blocks[0].sublayers[1].fc1.weight.mul_(3)             # another base
    pc = PaFi(c, 0.05)
    cases = [lambda: pc.load_delta(pa.delta_state()),
             lambda: PEFT.build({"name": "pafi", "sparsity": 0.0}, "peft", model=_model()),
             lambda: PEFT.build({"name": "pafi", "sparsity": 1.5}, "peft", model=_model()),
             lambda: PaFi(_model(), -0.1),
             lambda: PEFT.build({"name": "hiwi", "rank": 0}, "peft", model=_model()),
             lambda: HiWi(_model(), targets=("nope",))]
    for fn in cases:
        with pytest.raises(ConfigError) as e:
            fn()
        assert "\n" not in str(e.value)
