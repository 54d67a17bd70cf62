"""RoPE: both layouts against Hugging Face, partial rotary against GPT-NeoX, NTK and linear
scaling against transformers' rope utilities, and the relative property q·k = g(i - j)."""
import pytest
import torch

from tevo.errors import ConfigError
from tevo.positions.rope import RotaryPosition

TOL = dict(atol=1e-5, rtol=1e-5)


def _rope(head_dim=16, **kw):
    return RotaryPosition(head_dim, **kw)


def _qk(B=2, h=2, n=10, e=16):
    return torch.randn(B, h, n, e), torch.randn(B, h, n, e)


def test_rope_half_matches_hf_llama_rotary():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb
    cfg = LlamaConfig(hidden_size=32, num_attention_heads=2, max_position_embeddings=64,
                      rope_theta=500.0)
    q, k = _qk()
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [3, 4, 5, 6, 7, 8, 9, 10, 11, 40]])
    cos, sin = LlamaRotaryEmbedding(cfg)(q, pos)
    ref_q, ref_k = apply_rotary_pos_emb(q, k, cos, sin)
    pe = _rope(base=500.0, layout="half")
    out_q, out_k = pe.rotate(q, k, pos, pos)
    torch.testing.assert_close(out_q, ref_q, **TOL)
    torch.testing.assert_close(out_k, ref_k, **TOL)


def test_rope_interleaved_matches_hf_roformer():
    from transformers.models.roformer.modeling_roformer import (
        RoFormerSelfAttention, RoFormerSinusoidalPositionalEmbedding)
    emb = RoFormerSinusoidalPositionalEmbedding(64, 16)
    with torch.no_grad():
        emb.weight.copy_(emb.create_weight())
    q, k = _qk(n=12)
    sinusoidal = emb((2, 12))[None, None]                              # (1, 1, n, e)
    ref_q, ref_k = RoFormerSelfAttention.apply_rotary_position_embeddings(sinusoidal, q, k)
    pos = torch.arange(12).expand(2, -1)
    out_q, out_k = _rope(layout="interleaved").rotate(q, k, pos, pos)
    torch.testing.assert_close(out_q, ref_q, **TOL)
    torch.testing.assert_close(out_k, ref_k, **TOL)


def test_rope_partial_rotary_matches_gpt_neox():
    from transformers import GPTNeoXConfig
    from transformers.models.gpt_neox.modeling_gpt_neox import (GPTNeoXRotaryEmbedding,
                                                                 apply_rotary_pos_emb)
    cfg = GPTNeoXConfig(hidden_size=32, num_attention_heads=2, max_position_embeddings=64,
                        rotary_pct=0.5)
    q, k = _qk()
    pos = torch.arange(10).expand(2, -1) + 5
    cos, sin = GPTNeoXRotaryEmbedding(cfg)(q, pos)
    ref_q, ref_k = apply_rotary_pos_emb(q, k, cos, sin)
    pe = _rope(rotary_dim=0.5)
    assert pe.rotary_dim == 8
    out_q, out_k = pe.rotate(q, k, pos, pos)
    torch.testing.assert_close(out_q, ref_q, **TOL)
    torch.testing.assert_close(out_k, ref_k, **TOL)
    torch.testing.assert_close(out_q[..., 8:], q[..., 8:])              # the rest passes through
    assert _rope(rotary_dim=8).rotary_dim == 8


def test_rope_scalings_match_hf_rope_utils():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import (_compute_dynamic_ntk_parameters,
                                                  _compute_linear_scaling_rope_parameters)
    lin = LlamaConfig(hidden_size=32, num_attention_heads=2, max_position_embeddings=64,
                      rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 1e4})
    inv_lin, _ = _compute_linear_scaling_rope_parameters(lin)
    pe = _rope(scaling="linear", factor=4.0)
    pos = torch.arange(50).unsqueeze(0)
    # linear interpolation divides positions by s: angles m·θ/s = m·(θ/s)
    torch.testing.assert_close(pe.angles(pos), pos[..., None].float() * inv_lin, **TOL)
    # static NTK-aware: base·s^{d/(d-2)} = transformers' dynamic NTK at seq_len = s·L with factor 1
    ntk = LlamaConfig(hidden_size=32, num_attention_heads=2, max_position_embeddings=64,
                      rope_parameters={"rope_type": "dynamic", "factor": 1.0, "rope_theta": 1e4})
    inv_ntk, _ = _compute_dynamic_ntk_parameters(ntk, seq_len=4 * 64)
    torch.testing.assert_close(_rope(scaling="ntk", factor=4.0).inv_freq, inv_ntk, **TOL)
    # NTK keeps the highest frequency and stretches the lowest by exactly s
    base = _rope()
    torch.testing.assert_close(_rope(scaling="ntk", factor=4.0).inv_freq[0], base.inv_freq[0])
    assert _rope(scaling="ntk", factor=4.0).inv_freq[-1] == pytest.approx(base.inv_freq[-1] / 4.0)


@pytest.mark.parametrize("kw", [dict(layout="half"), dict(layout="interleaved"),
                                dict(rotary_dim=0.25), dict(scaling="ntk", factor=8.0),
                                dict(scaling="linear", factor=2.0), dict(base=500.0),
                                dict(scaling="llama3", factor=8.0, original_max_len=64),
                                dict(scaling="yarn", factor=4.0, original_max_len=32)])
def test_rope_scores_depend_only_on_relative_position(kw):
    pe = _rope(**kw)
    q, k = _qk(n=9)
    pos = torch.arange(9).expand(2, -1)
    qa, ka = pe.rotate(q, k, pos, pos)
    qb, kb = pe.rotate(q, k, pos + 123, pos + 123)
    torch.testing.assert_close(qa @ ka.transpose(-1, -2), qb @ kb.transpose(-1, -2),
                               atol=2e-4, rtol=1e-4)
    # and it does depend on the offset between the two
    qc, _ = pe.rotate(q, k, pos + 1, pos)
    assert not torch.allclose(qc @ ka.transpose(-1, -2), qa @ ka.transpose(-1, -2), atol=1e-3)


def test_rope_bad_options_are_one_line_config_errors():
    for kw, word in [(dict(layout="diagonal"), "interleaved"), (dict(rotary_dim=7), "even"),
                     (dict(rotary_dim=1.5), "fraction"), (dict(scaling="nope"), "yarn"),
                     (dict(scaling="llama3", low_freq_factor=4.0), "low_freq_factor"),
                     (dict(scaling="yarn", beta_fast=0.5), "beta_slow"),
                     (dict(scaling="yarn", attention_factor=0.0), "attention_factor"),
                     (dict(original_max_len=0), "original_max_len"),
                     (dict(factor=0.5), ">= 1")]:
        with pytest.raises(ConfigError, match=word) as e:
            _rope(**kw)
        assert "\n" not in str(e.value)


def test_rope_adapts_to_the_mixers_qk_size():
    """Mixers whose q/k size differs from d_model/heads (GAU's shared qk) get the same
    settings resolved for their size."""
    q = torch.randn(1, 1, 6, 12)
    pos = torch.arange(6).unsqueeze(0)
    for kw in (dict(), dict(rotary_dim=0.5, layout="interleaved")):
        torch.testing.assert_close(_rope(4, **kw).rotate(q, q, pos, pos)[0],
                                   _rope(12, **kw).rotate(q, q, pos, pos)[0])


def _hf_rope_config(**rp):
    from transformers import LlamaConfig
    return LlamaConfig(hidden_size=64, num_attention_heads=2, max_position_embeddings=256,
                       rope_parameters={"rope_theta": 1e4, **rp})


@pytest.mark.parametrize("kw", [
    dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
         original_max_position_embeddings=64),
    dict(rope_type="llama3", factor=4.0, low_freq_factor=2.0, high_freq_factor=8.0,
         original_max_position_embeddings=128),
    dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64),
    dict(rope_type="yarn", factor=8.0, original_max_position_embeddings=32, beta_fast=16,
         beta_slow=2, truncate=False),
    dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64,
         attention_factor=1.3)], ids=["llama3", "llama3-bands", "yarn", "yarn-betas",
                                      "yarn-attention-factor"])
def test_rope_llama3_and_yarn_match_transformers_rope_init(kw):
    """Frequencies (and YaRN's attention factor √(1/t) = 0.1 ln s + 1, applied to q and k)
    equal transformers' ROPE_INIT_FUNCTIONS; all three wavelength bands are exercised."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    kind = kw.pop("rope_type")
    inv, af = ROPE_INIT_FUNCTIONS[kind](_hf_rope_config(rope_type=kind, **kw), "cpu")
    opts = {"factor": kw["factor"], "original_max_len": kw["original_max_position_embeddings"]}
    for a, b in (("low_freq_factor", "low_freq_factor"), ("high_freq_factor", "high_freq_factor"),
                 ("beta_fast", "beta_fast"), ("beta_slow", "beta_slow"),
                 ("truncate", "truncate"), ("attention_factor", "attention_factor")):
        if a in kw:
            opts[b] = kw[a]
    pe = _rope(32, scaling=kind, max_len=256, **opts)
    torch.testing.assert_close(pe.inv_freq, inv.float(), atol=0, rtol=1e-6)
    base = _rope(32).inv_freq
    assert (pe.inv_freq < base * (1 - 1e-3)).any() and torch.equal(pe.inv_freq[0], base[0])
    assert pe.attention_factor == pytest.approx(af)
    q = torch.randn(1, 1, 5, 32)
    pos = torch.arange(5)[None]
    plain = _rope(32)
    plain.inv_freq = pe.inv_freq
    torch.testing.assert_close(pe.apply(q, pos), plain.apply(q, pos) * af)


def test_rope_dynamic_ntk_follows_the_call_length_as_transformers():
    """Dynamic NTK: unscaled while the call fits in max_len, then base·(sL/L0 − s + 1)^{d/(d−2)}
    for a call whose longest position is L − 1 (transformers' dynamic rope at seq_len L)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    c = _hf_rope_config(rope_type="dynamic", factor=4.0)
    pe = _rope(32, scaling="dynamic", factor=4.0, max_len=256)
    for L in (10, 256, 300, 1000):
        inv, _ = ROPE_INIT_FUNCTIONS["dynamic"](c, "cpu", seq_len=L)
        torch.testing.assert_close(pe.dims(32, "cpu", L)[1], inv.float(), atol=0, rtol=1e-6)
        q = torch.randn(1, 1, 3, 32)
        pos = torch.tensor([[L - 3, L - 2, L - 1]])
        fixed = _rope(32)
        fixed.inv_freq = inv.float()
        torch.testing.assert_close(pe.rotate(q, q, pos, pos)[0], fixed.apply(q, pos),
                                   atol=1e-4, rtol=1e-4)
    assert torch.equal(pe.dims(32, "cpu", 200)[1], _rope(32).inv_freq)
