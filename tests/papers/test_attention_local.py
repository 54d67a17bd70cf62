"""Local attention: window ≥ n equals softmax; equals dense attention with the equivalent mask;
rolling cache (bounded) == full pass under padding, bias and rotary hooks; O(n·w) memory;
equals Mistral's sliding-window attention (Hugging Face) with copied weights."""
import pytest
import torch

from papers.attention_reference import (ToyBias, ToyRotary, ctx, dense_pattern_attention,
                                        largest_intermediate, prefill_then_steps, qkv)
from tevo.nn.context import positions_from_mask
from tiny import make_mixer

D = 16


def _copy(dst, src):
    dst.load_state_dict(src.state_dict())
    return dst


@pytest.mark.parametrize("pattern", ["sliding", "blocked"])
def test_window_at_least_n_equals_softmax(pattern):
    n = 10
    for causal in (True, False):
        loc = make_mixer("local", causal, d=D, heads=2, window=n, pattern=pattern)
        ref = _copy(make_mixer("softmax", causal, d=D, heads=2), loc)
        x = torch.randn(2, n, D)
        mask = torch.ones(2, n, dtype=torch.bool)
        if causal:
            mask[1, :3] = False                              # left padding
        else:
            mask[1, 7:] = False                              # right padding
        y, _ = loc(x, ctx(x, causal, mask))
        r, _ = ref(x, ctx(x, causal, mask))
        torch.testing.assert_close(y[mask], r[mask], atol=1e-5, rtol=1e-4)


def _allowed(m, causal):
    return lambda i, j, h: bool(m.allowed(torch.tensor(i), torch.tensor(j), causal))


@pytest.mark.parametrize("pattern,window,lb,lf", [("sliding", 3, 1, None), ("sliding", 5, 1, None),
                                                  ("blocked", 3, 1, None), ("blocked", 4, 2, 1),
                                                  ("blocked", 5, 0, 0)])
def test_matches_dense_attention_with_equivalent_mask(pattern, window, lb, lf):
    n = 13
    for causal in (True, False):
        m = make_mixer("local", causal, d=D, heads=2, window=window, pattern=pattern,
                       look_backward=lb, look_forward=lf)
        x = torch.randn(3, n, D)
        mask = torch.ones(3, n, dtype=torch.bool)
        if causal:
            mask[1, :4], mask[2, :1] = False, False          # left padding
        else:
            mask[1, 9:], mask[2, 12:] = False, False         # right padding
        y, _ = m(x, ctx(x, causal, mask))
        # the naive mask uses the paper's definition directly on positions that skip padding
        w = window

        def allowed(i, j, h):
            if pattern == "sliding":
                return (0 <= i - j < w) if causal else abs(i - j) < w
            ok = i // w - lb <= j // w <= i // w + (m.look_forward)
            return ok and (j <= i or not causal)
        ref, _ = dense_pattern_attention(m, x, allowed, mask)
        torch.testing.assert_close(y[mask], ref[mask], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("pattern", ["sliding", "blocked"])
@pytest.mark.parametrize("enc", [None, "bias", "rotary"])
def test_rolling_cache_equals_full_pass(pattern, enc):
    n = 17
    m = make_mixer("local", True, d=D, heads=2, window=4, pattern=pattern)
    pos = {None: None, "bias": ToyBias(2), "rotary": ToyRotary()}[enc]
    x = torch.randn(3, n, D)
    mask = torch.ones(3, n, dtype=torch.bool)
    mask[1, :3], mask[2, :6] = False, False
    for k, chunk in ((5, 1), (2, 3), (7, 4)):
        inc, full, state = prefill_then_steps(m, x, mask, k, pos, chunk)
        torch.testing.assert_close(inc[mask], full[mask], atol=1e-5, rtol=1e-4)
        assert state["k"].shape[2] == m.cache_span()           # bounded, not n
    if enc == "bias":   # the tiled bias hook equals the dense bias on the whole sequence
        q, kk, _ = qkv(m, x)
        p = positions_from_mask(mask, n)
        ref, _ = dense_pattern_attention(m, x, lambda i, j, h: bool(m.allowed(
            torch.tensor(i), torch.tensor(j), True)), mask, bias=pos.bias(q, kk, p, p))
        torch.testing.assert_close(full[mask], ref[mask], atol=1e-5, rtol=1e-4)


def test_memory_grows_as_n_times_w():
    """The largest intermediate grows linearly in n (doubling n doubles it) and stays far
    below one n × n score matrix per head."""
    w, h = 8, 2
    for pattern in ("sliding", "blocked"):
        for causal in (True, False):
            m = make_mixer("local", causal, d=D, heads=h, window=w, pattern=pattern)
            s1 = largest_intermediate(m, torch.randn(1, 512, D), causal)
            s2 = largest_intermediate(m, torch.randn(1, 1024, D), causal)
            assert 1.8 < s2 / s1 < 2.2
            assert s2 <= h * 1024 * 4 * w < h * 1024 * 1024 / 16


def test_equals_mistral_sliding_window_attention():
    tr = pytest.importorskip("transformers")
    from transformers.masking_utils import create_sliding_window_causal_mask
    from transformers.models.mistral.modeling_mistral import MistralAttention
    d, h, kvh, W, n = 32, 4, 2, 5, 14
    cfg = tr.MistralConfig(hidden_size=d, num_attention_heads=h, num_key_value_heads=kvh,
                           sliding_window=W, intermediate_size=64, num_hidden_layers=1,
                           vocab_size=10)
    cfg._attn_implementation = "eager"
    hf = MistralAttention(cfg, 0).eval()
    m = make_mixer("local", True, d=d, heads=h, kv_heads=kvh, window=W, bias=False)
    with torch.no_grad():
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            getattr(m, name).weight.copy_(getattr(hf, name).weight)
    x = torch.randn(2, n, d)
    pad = torch.ones(2, n, dtype=torch.long)
    pad[1, :4] = 0                                            # left padding in sample 1
    pos_ids = (pad.cumsum(-1) - 1).clamp(min=0)
    hf_mask = create_sliding_window_causal_mask(config=cfg, inputs_embeds=x, attention_mask=pad,
                                                past_key_values=None, position_ids=pos_ids)
    e = d // h
    cos, sin = torch.ones(2, n, e), torch.zeros(2, n, e)    # identity rotary: compare attention
    ref, _ = hf(x, (cos, sin), hf_mask)
    y, _ = m(x, ctx(x, True, pad.bool()))
    real = pad.bool()
    torch.testing.assert_close(y[real], ref[real], atol=1e-5, rtol=1e-4)


def test_bad_options_are_config_errors():
    from tevo.errors import ConfigError
    for kw in ({"pattern": "dilated"}, {"window": 0}, {"look_backward": -1}):
        with pytest.raises(ConfigError):
            make_mixer("local", True, d=D, heads=2, **kw)


def test_mid_sequence_padding_is_refused():
    """Tiles assume real tokens are contiguous (left/right padding); anything else is an error,
    never a silently wrong window."""
    from tevo.errors import InputError
    from tevo.nn.context import MixerContext
    m = make_mixer("local", True, d=D, heads=2, window=3)
    x = torch.randn(1, 6, D)
    mask = torch.tensor([[True, False, True, True, True, True]])
    with pytest.raises(InputError):
        m(x, MixerContext(causal=True, key_padding_mask=mask,
                          positions=torch.tensor([[0, 0, 1, 2, 3, 4]])))
