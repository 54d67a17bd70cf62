import math

import pytest
import torch

import tevo
from tevo.errors import InputError
from tiny import make_position


def test_sinusoidal_matches_formula():
    d = 16
    pe = make_position("sinusoidal", d=d)
    pos = torch.arange(50).unsqueeze(0)
    out = pe.embed(torch.zeros(1, 50, d), pos)[0]
    for p in (0, 1, 7, 49):
        for i in range(d // 2):
            assert math.isclose(out[p, 2 * i].item(), math.sin(p / 10000 ** (2 * i / d)), abs_tol=1e-5)
            assert math.isclose(out[p, 2 * i + 1].item(), math.cos(p / 10000 ** (2 * i / d)), abs_tol=1e-5)


def test_learned_rejects_positions_past_table():
    model = tevo.build_model({"arch": "gpt", "vocab_size": 20, "d_model": 16, "n_layers": 1,
                              "max_len": 8, "mixer": {"name": "softmax", "heads": 2},
                              "position": {"name": "learned", "max_len": 8}})
    model(torch.randint(0, 20, (1, 8)))
    with pytest.raises(InputError, match="max_len=8"):
        model(torch.randint(0, 20, (1, 9)))


def test_nope_bidirectional_is_permutation_equivariant():
    """Without positions, a bidirectional softmax layer is permutation-equivariant (so NoPE
    carries no order there), and config validation refuses NoPE in a bidirectional model."""
    from tevo.errors import ConfigError
    from tiny import make_mixer, ctx_for
    m = make_mixer("softmax", False)
    x = torch.randn(1, 10, 16)
    perm = torch.randperm(10)
    y, _ = m(x, ctx_for(x, False))
    yp, _ = m(x[:, perm], ctx_for(x, False))
    torch.testing.assert_close(yp, y[:, perm], atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match="bidirectional"):
        tevo.build_model({"arch": "bert", "position": "none", "d_model": 16, "n_layers": 1})


def test_sinusoidal_scales_embeddings_by_sqrt_d_as_in_the_paper():
    """§3.4: token embeddings are multiplied by √d before the (unit-amplitude) table is added;
    the encoder–decoder does not scale twice."""
    d = 16
    pe = make_position("sinusoidal", d=d)
    x = torch.randn(1, 5, d)
    pos = torch.arange(5).unsqueeze(0)
    torch.testing.assert_close(pe.embed(x, pos) - pe.embed(torch.zeros_like(x), pos), x * d ** 0.5)
    ed = tevo.build_model("transformer", d_model=d, n_layers=1, n_dec_layers=1, vocab_size=20,
                          mixer={"name": "softmax", "heads": 2}, ffn={"name": "mlp", "d_ff": 32})
    assert ed.scale == 1.0 and ed.pos.scale_input


def test_sinusoidal_token_embeddings_start_at_the_tables_scale():
    """With the paper's √d scaling the token embeddings are initialised N(0, d^-1/2), so the
    scaled tokens have unit variance and the table (sin/cos, variance 1/2 per channel) does not
    drown them; learned positions keep GPT-2's N(0, 0.02)."""
    d = 256
    dims = dict(vocab_size=512, d_model=d, n_layers=1, mixer={"name": "softmax", "heads": 2})
    for arch in ("gpt", "bert", "transformer"):
        m = tevo.build_model({"arch": arch, "position": "sinusoidal", **dims})
        w = m.embed.weight.detach()
        assert abs(float(w.std()) * d ** 0.5 - 1.0) < 0.02, arch        # √d·E ~ N(0, 1)
        pos = torch.arange(64)
        table = m.pos.embed(torch.zeros(1, 64, d), pos[None])
        ratio = float((w[:64] * d ** 0.5).pow(2).mean() / table.pow(2).mean())
        assert 1.5 < ratio < 2.5, (arch, ratio)                         # 1 : 1/2
    m = tevo.build_model({"arch": "gpt", "position": "learned", **dims})
    assert abs(float(m.embed.weight.detach().std()) - 0.02) < 0.002
    unscaled = tevo.build_model({"arch": "gpt", "position": {"name": "sinusoidal",
                                                              "scale_input": False}, **dims})
    assert abs(float(unscaled.embed.weight.detach().std()) - 0.02) < 0.002
