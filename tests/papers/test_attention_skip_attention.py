"""Skip-Attention through a whole model: reusing layers compute no QKᵀ (no projections, no
attention kernel call), apply Φ to the previous attention output, and cached decoding of the
model equals its full pass."""
import torch
import torch.nn.functional as F

import tevo
from tiny import cached_logits
from tevo.mixers.attention import softmax as softmax_module
from tevo.mixers.attention.skip_attention import CARRY_KEY


def _model():
    return tevo.build_model({"arch": "gpt", "vocab_size": 50, "d_model": 16, "n_layers": 4,
                             "max_len": 64, "mixer": {"name": "skip_attention", "heads": 2}}).eval()


def test_reused_layers_compute_no_qk(monkeypatch):
    model = _model()
    mixers = [b.sublayers[0] for b in model.blocks.blocks]
    assert [m.reusing for m in mixers] == [False, True, False, True]
    for m in mixers[1::2]:
        names = {n for n, _ in m.named_modules()}
        assert not any(k in n for n in names for k in ("q_proj", "k_proj", "v_proj", "attn"))
    calls = []
    fns = softmax_module.ATTENTION_FUNCTIONS
    for name, fn in list(fns.items()):
        monkeypatch.setitem(fns, name, lambda *a, _fn=fn, **k: calls.append(1) or _fn(*a, **k))
    seen = {}

    def hook(mod, args, out):
        seen.setdefault("z", []).append((mod, args[1].carry[CARRY_KEY].detach(), out[0].detach()))
    for m in mixers:
        m.register_forward_hook(hook)
    model(torch.randint(0, 50, (2, 9)))
    assert len(calls) == 2                                   # layers 0 and 2 only
    # a reusing layer's output is Φ(Z) of the latest computed attention output Z
    assert [m.reusing for m, _, _ in seen["z"]] == [False, True, False, True]
    for i in (1, 3):
        m, z, out = seen["z"][i]
        torch.testing.assert_close(z, seen["z"][i - 1][2])    # the previous layer's output
        h = F.gelu(m.fc1(z))
        ref = m.fc2(m.dwconv(F.pad(h, (0, 0, 2, 0)).transpose(1, 2)).transpose(1, 2))
        torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)


def test_skip_attention_model_cached_decode_equals_full_pass():
    model = _model()
    ids = torch.randint(0, 50, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[0, :4] = False
    full = model(ids, attention_mask=mask).logits
    cached = cached_logits(model, ids, mask, prefill=6)
    torch.testing.assert_close(cached[mask], full[mask], atol=1e-5, rtol=1e-4)
