"""RealFormer: layer l's pre-softmax scores are its own QKᵀ/√d plus layer l−1's (ctx.carry),
checked through a whole model, and cached decoding of that model equals the full pass."""
import math

import torch

import tevo
from tiny import cached_logits
from tevo.mixers.attention.realformer import CARRY_KEY


def _model(n_layers=3):
    return tevo.build_model({"arch": "gpt", "vocab_size": 50, "d_model": 16, "n_layers": n_layers,
                             "max_len": 64, "mixer": {"name": "realformer", "heads": 2}}).eval()


def test_realformer_scores_include_previous_layer():
    model = _model()
    seen = []

    def hook(mod, args, out):
        h, ctx = args[0], args[1]
        B, n, _ = h.shape
        sp = lambda t: t.view(B, n, mod.heads, -1).transpose(1, 2)
        own = sp(mod.q_proj(h)) @ sp(mod.k_proj(h)).transpose(-1, -2) / math.sqrt(mod.head_dim)
        seen.append((own.detach(), ctx.carry[CARRY_KEY].detach().clone()))
    for blk in model.blocks.blocks:
        blk.sublayers[0].register_forward_hook(hook)
    ids = torch.randint(0, 50, (2, 10))
    model(ids)
    assert len(seen) == 3
    torch.testing.assert_close(seen[0][1], seen[0][0], atol=1e-5, rtol=1e-5)
    for l in (1, 2):
        torch.testing.assert_close(seen[l][1], seen[l][0] + seen[l - 1][1], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(seen[l][1], seen[l][0], atol=1e-3)   # the residual matters


def test_realformer_model_cached_decode_equals_full_pass():
    model = _model()
    ids = torch.randint(0, 50, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, :3] = False
    full = model(ids, attention_mask=mask).logits
    cached = cached_logits(model, ids, mask, prefill=5)
    torch.testing.assert_close(cached[mask], full[mask], atol=1e-5, rtol=1e-4)
