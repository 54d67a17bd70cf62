"""LaMemo (Ji et al., 2022): interpolating a memory row's old attention with its look-ahead
attention by the softmax normalisers is exactly attention over its left context ∪ the rows on
its right up to the first current token; the model stays causal; the refresh changes what XL's
frozen memory would give."""
import math

import pytest
import torch

import tevo
from tevo.errors import ConfigError
from tevo.memory.xl import stream_logits

V = 29


def _model(mem_len=6, n_layers=2, memory="lamemo", position="rope"):
    torch.manual_seed(0)
    return tevo.build_model({"arch": "gpt", "vocab_size": V, "d_model": 16, "n_layers": n_layers,
                             "max_len": 64, "mixer": {"name": "softmax", "heads": 2},
                             "position": position,
                             "memory": {"name": memory, "mem_len": mem_len}}).eval()


def test_refreshed_memory_is_attention_over_left_context_and_look_ahead_window():
    """Segments of 6, memory 6: in segment 2 the memory is segment 1; at layer 0 (inputs are
    embeddings, so every key is known) memory row i's refreshed attention must equal plain
    softmax attention over positions 0 … 12: segment 0 and rows ≤ i of segment 1 (its old
    attention, when it was current) and rows > i of segment 1 plus the first token of segment 2
    (its look-ahead)."""
    model = _model()
    calls = []
    orig = model.memory.attention

    def spy(mixer, pe, h, M, positions, key_mask, recur, denom):
        out = orig(mixer, pe, h, M, positions, key_mask, recur, denom)
        calls.append((mixer, pe, M, out[0]))
        return out
    model.memory.attention = spy
    ids = torch.randint(0, V, (2, 18))
    with torch.no_grad():
        stream_logits(model, ids, 6)
        mixer, pe, M, heads = calls[4]                              # segment 2, layer 0
        assert M == 6
        blk = model.blocks.blocks[0]
        pos = torch.arange(18).expand(2, 18)
        h = blk.residuals[0].norm(model.embed_tokens(ids, pos))
        q = mixer._split(mixer.q_proj(h), 2)
        k = mixer._split(mixer.k_proj(h), 2)
        v = mixer._split(mixer.v_proj(h), 2)
        q, k = pe.rotate(q, k, pos, pos)
        for i in range(6):
            row = 6 + i
            s = (q[:, :, row] [:, :, None] * k[:, :, :13]).sum(-1) / math.sqrt(8)   # keys 0..12
            ref = (s.softmax(-1)[..., None] * v[:, :, :13]).sum(2)
            torch.testing.assert_close(heads[:, :, i], ref, atol=1e-5, rtol=1e-5)


def test_causal_and_different_from_a_frozen_xl_memory():
    model = _model()
    ids = torch.randint(0, V, (1, 18))
    with torch.no_grad():
        base = stream_logits(model, ids, 6)[0]
        for t in (13, 17):                                         # a later token of segment 2
            other = ids.clone()
            other[0, t] = (other[0, t] + 1) % V
            got = stream_logits(model, other, 6)[0]
            torch.testing.assert_close(got[:, :t], base[:, :t], atol=0, rtol=0)
        xl = _model(memory="xl_memory")
        xl.load_state_dict(model.state_dict())
        frozen = stream_logits(xl, ids, 6)[0]
    torch.testing.assert_close(frozen[:, :6], base[:, :6])          # no memory yet: equal
    assert (frozen[:, 12:] - base[:, 12:]).abs().max() > 1e-4       # refreshed vs frozen


@pytest.mark.parametrize("over,field", [
    ({"mem_len": 0}, "model.memory.mem_len"),
    ({"position": "alibi"}, "model.position"),
])
def test_bad_options_are_one_line_errors(over, field):
    kw = {"mem_len": over.get("mem_len", 4), "position": over.get("position", "rope")}
    with pytest.raises(ConfigError) as e:
        _model(**kw)
    assert str(e.value).startswith(field) and "\n" not in str(e.value)
