"""Perceiver AR (Hawthorne et al., 2022) and Perceiver (Jaegle et al., 2021) as models: the AR
model is causal at every predicted position, predicts only its last m positions (and the LM
objective scores only those), and its latent stack costs the same at every context length."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import tevo
from tevo.errors import ConfigError
from tevo.registry import OBJECTIVES

V = 29


def ar(latents=4, n_layers=2, max_len=64):
    torch.manual_seed(0)
    return tevo.build_model({"arch": "perceiver_ar", "vocab_size": V, "d_model": 16,
                             "n_layers": n_layers, "max_len": max_len, "position": "learned",
                             "mixer": {"name": "softmax", "heads": 2},
                             "extra": {"latents": latents, "mlp_mult": 2}}).eval()


def test_perceiver_ar_is_causal_and_scores_only_its_latent_positions():
    m = ar(latents=5)
    n = 12
    ids = torch.randint(0, V, (2, n))
    out = m(ids)
    assert out.extra["scored"].sum(-1).tolist() == [5, 5]
    assert out.extra["scored"][:, n - 5:].all()
    for t in range(n):                                  # no scored logit before t moves
        other = ids.clone()
        other[:, t] = (other[:, t] + 1) % V
        diff = (m(other).logits - out.logits).abs().amax(-1)          # (B, n)
        for p in range(n - 5, n):
            if p < t:
                assert diff[:, p].max() < 1e-6, (t, p)
            else:                                       # and the test is not vacuous
                assert diff[:, p].max() > 0, (t, p)
    clm = OBJECTIVES.build("clm", "objective")
    labels = torch.randint(0, V, (2, n))
    loss, metrics = clm(m, {"input_ids": ids, "labels": labels})
    logits = out.logits[:, n - 5:].reshape(-1, V)
    want = torch.nn.functional.cross_entropy(logits, labels[:, n - 5:].reshape(-1))
    torch.testing.assert_close(loss, want, atol=1e-5, rtol=1e-5)
    assert metrics["loss"][1] == 10                     # 2 × 5 scored tokens
    with pytest.raises(ConfigError, match="model.extra.latents"):
        ar(latents=100, max_len=64)
    with pytest.raises(ConfigError, match="model.extra.latents"):
        ar(latents=0)


def _latent_flops(m, n):
    ids = torch.randint(0, V, (1, n))
    m.requires_grad_(False)            # (the counter's module hooks need no autograd graph)
    with FlopCounterMode(display=False) as fc:
        m(ids)
    return fc.get_total_flops()


def test_perceiver_latent_depth_costs_the_same_at_every_length():
    """The latent stack's cost is independent of n: adding latent layers adds the same FLOPs
    at n = 64 and n = 512 (Perceiver and Perceiver AR alike)."""
    for arch in ("perceiver", "perceiver_ar"):
        def model(L):
            torch.manual_seed(0)
            return tevo.build_model({"arch": arch, "vocab_size": V, "d_model": 16,
                                     "n_layers": L, "max_len": 512, "position": "learned",
                                     "mixer": {"name": "softmax", "heads": 2},
                                     "extra": {"latents": 8, "mlp_mult": 2}}).eval()
        m1, m3 = model(1), model(3)
        extra = [_latent_flops(m3, n) - _latent_flops(m1, n) for n in (64, 512)]
        assert extra[0] == extra[1] > 0, (arch, extra)
    enc = tevo.build_model({"arch": "perceiver", "vocab_size": V, "d_model": 16, "n_layers": 1,
                            "position": "learned", "extra": {"latents": 4}})
    assert enc(torch.randint(0, V, (2, 9))).logits.shape == (2, 9, V)
