"""Long-range memory in few layers (Rae & Razavi, 2020): each layer keeps its own memory length
(M_long in the chosen layers, M_short elsewhere), equal to the Transformer-XL recursion unrolled
layer by layer with those lengths; all layers long is xl_memory; less memory reaches less far."""
import pytest
import torch

import tevo
from tevo.errors import ConfigError
from tevo.memory.xl import stream_logits
from tevo.nn.context import MixerContext

V = 37


def _model(memory, n_layers=3):
    torch.manual_seed(0)
    return tevo.build_model({"arch": "gpt", "vocab_size": V, "d_model": 16, "n_layers": n_layers,
                             "max_len": 64, "mixer": {"name": "softmax", "heads": 2},
                             "position": "xl_relative", "memory": memory}).eval()


def _reference(model, ids, seg_len, lens):
    """h^{l+1} of segment τ = block_l run causally on [h^l of the lens[l] tokens before τ ;
    h^l of τ], its last rows kept — per layer, over the whole stream."""
    B, T = ids.shape
    pos = torch.arange(T).expand(B, T)
    h = model.embed_tokens(ids, pos)
    for i, blk in enumerate(model.blocks.blocks):
        rows = []
        for s in range(0, T, seg_len):
            a, e = max(0, s - lens[i]), min(T, s + seg_len)
            y, _ = blk(h[:, a:e], MixerContext(causal=True, positions=pos[:, a:e], pos=model.pos,
                                               layer=i, n_layers=len(model.blocks)))
            rows.append(y[:, s - a:])
        h = torch.cat(rows, 1)
    return model.head(model.norm(h))


@pytest.mark.parametrize("short_len,long_layers", [(0, [2]), (3, [1]), (2, [0, 2])])
def test_layers_keep_their_own_memory_length_as_the_recursion_unrolled_by_layer(short_len,
                                                                                 long_layers):
    model = _model({"name": "sparse_long_memory", "mem_len": 9, "short_len": short_len,
                    "long_layers": long_layers})
    ids = torch.randint(0, V, (2, 26))
    lens = [9 if i in long_layers else short_len for i in range(3)]
    with torch.no_grad():
        seg, mem = stream_logits(model, ids, 6)
        ref = _reference(model, ids, 6, lens)
    torch.testing.assert_close(seg, ref, atol=1e-5, rtol=1e-5)
    assert [m.shape[1] for m in mem["layers"]] == lens


def test_all_layers_long_is_xl_memory_and_fewer_long_layers_reach_less_far():
    ids = torch.randint(0, V, (1, 24))
    sparse = _model({"name": "sparse_long_memory", "mem_len": 6, "long_layers": [0, 1, 2]})
    xl = _model({"name": "xl_memory", "mem_len": 6})
    with torch.no_grad():
        torch.testing.assert_close(stream_logits(sparse, ids, 6)[0], stream_logits(xl, ids, 6)[0])
    one = _model({"name": "sparse_long_memory", "mem_len": 6, "long_layers": [2]})

    def last(m, x):
        with torch.no_grad():
            return stream_logits(m, x, 6)[0][:, 18:]

    for k, (m, reach) in enumerate(((xl, {1, 2}), (one, {2}))):
        base = last(m, ids)
        for seg in (1, 2):
            other = ids.clone()
            other[0, seg * 6] = (other[0, seg * 6] + 1) % V
            assert (not torch.equal(last(m, other), base)) == (seg in reach), (k, seg)


@pytest.mark.parametrize("mem,field", [
    ({"mem_len": 0}, "model.memory.mem_len"),
    ({"mem_len": 4, "short_len": -1}, "model.memory.short_len"),
    ({"mem_len": 4, "long_layers": [3]}, "model.memory.long_layers"),
    ({"mem_len": 4, "long_layers": []}, "model.memory.long_layers"),
])
def test_bad_options_are_one_line_errors(mem, field):
    with pytest.raises(ConfigError) as e:
        _model({"name": "sparse_long_memory", **mem})
    assert str(e.value).startswith(field) and "\n" not in str(e.value)
