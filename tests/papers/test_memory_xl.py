"""Transformer-XL segment recurrence (Dai et al., 2019, §3.2): segment-wise evaluation with a
memory that spans the stream equals one long causal pass; with a shorter memory it equals the
recursion unrolled layer by layer (paper Fig. 2), the memory is stop-gradient, and the
dependency length is N·M (N layers, memory M), not the whole prefix."""
import pytest
import torch

import tevo
from tevo.errors import ConfigError, InputError
from tevo.memory.xl import stream_logits
from tevo.nn.context import MixerContext

V = 37


def _model(mem_len, position="xl_relative", mixer=None, n_layers=2, **kw):
    torch.manual_seed(0)
    cfg = {"arch": "gpt", "vocab_size": V, "d_model": 16, "n_layers": n_layers, "max_len": 64,
           "mixer": mixer or {"name": "softmax", "heads": 2}, "position": position,
           "memory": {"name": "xl_memory", "mem_len": mem_len}, **kw}
    return tevo.build_model(cfg).eval()


def _layer_major_reference(model, ids, seg_len, mem_len):
    """The XL recursion unrolled layer by layer over the whole stream, with no memory state:
    h^{l+1} of segment τ = block_l run causally on [h^l of the mem_len tokens before τ ;
    h^l of τ], its last rows kept. h^0 = the token embeddings (B, T, d)."""
    B, T = ids.shape
    pos = torch.arange(T).expand(B, T)
    h = model.embed_tokens(ids, pos)
    for i, blk in enumerate(model.blocks.blocks):
        rows = []
        for s in range(0, T, seg_len):
            a, e = max(0, s - mem_len), min(T, s + seg_len)
            ctx = MixerContext(causal=True, positions=pos[:, a:e], pos=model.pos, layer=i,
                               n_layers=len(model.blocks))
            y, _ = blk(h[:, a:e], ctx)
            rows.append(y[:, s - a:])
        h = torch.cat(rows, 1)
    return model.head(model.norm(h) if model.norm is not None else h)


@pytest.mark.parametrize("mixer,position", [
    ("softmax", "xl_relative"), ("softmax", "rope"), ("softmax", "alibi"),
    ({"name": "linear"}, "learned")], ids=["softmax+xl_relative", "softmax+rope", "softmax+alibi",
                                           "linear+learned"])
def test_segments_with_full_memory_equal_one_long_pass(mixer, position):
    """mem_len ≥ stream length: every layer's memory is the exact prefix, so segment-wise
    evaluation is the long causal pass, with and without left padding."""
    mixer = {"name": "softmax", "heads": 2} if mixer == "softmax" else mixer
    model = _model(32, position, mixer)
    T = 23
    ids = torch.randint(0, V, (2, T))
    with torch.no_grad():
        full = model(ids).logits
        seg, mem = stream_logits(model, ids, 5)                 # segments 5, 5, 5, 5, 3
        torch.testing.assert_close(seg, full, atol=1e-5, rtol=1e-5)
        assert [m.shape[1] for m in mem["layers"]] == [T] * 2
        mask = torch.ones(2, T, dtype=torch.bool)
        mask[0, :7] = False                                      # row 0: a whole padded segment
        full = model(ids, attention_mask=mask).logits
        seg, mem = stream_logits(model, ids, 5, attention_mask=mask)
    torch.testing.assert_close(seg[mask], full[mask], atol=1e-5, rtol=1e-5)
    assert mem["seen"].tolist() == [T - 7, T]
    assert mem["positions"][0, -1].item() == T - 8


@pytest.mark.parametrize("mem_len", [3, 9])
def test_short_memory_equals_the_recursion_unrolled_by_layer(mem_len):
    """mem_len < stream length (shorter and longer than a segment): the memory of layer l holds
    layer l's input for the previous mem_len tokens, each computed with its own memory."""
    model = _model(mem_len, "xl_relative", n_layers=3)
    ids = torch.randint(0, V, (2, 26))
    with torch.no_grad():
        seg, _ = stream_logits(model, ids, 6)
        ref = _layer_major_reference(model, ids, 6, mem_len)
        long = model(ids).logits
    torch.testing.assert_close(seg, ref, atol=1e-5, rtol=1e-5)
    assert (seg[:, 6:] - long[:, 6:]).abs().max() > 1e-3        # not the long pass any more


def test_one_layer_equals_a_plain_pass_over_each_window():
    """N = 1: the memory is the embeddings of the previous M tokens, so each segment equals a
    plain causal pass over [M tokens before it ; the segment] at the stream positions."""
    M, n = 4, 5
    model = _model(M, "rope", n_layers=1)
    ids = torch.randint(0, V, (2, 20))
    with torch.no_grad():
        seg, _ = stream_logits(model, ids, n)
        for s in range(0, 20, n):
            a = max(0, s - M)
            ref = model(ids[:, a:s + n], positions=torch.arange(a, s + n).expand(2, -1)).logits
            torch.testing.assert_close(seg[:, s:s + n], ref[:, s - a:], atol=1e-5, rtol=1e-5)


def test_memory_is_stop_gradient_and_dependency_length_is_layers_times_memory():
    """SG(m): no gradient from segment τ+1 reaches segment τ's inputs, yet the outputs depend
    on them; with M = n and N = 2 layers, segment 3 sees segments 1–3 and not segment 0."""
    n = 4
    model = _model(n, "xl_relative", n_layers=2, tie_embeddings=False).train()
    embedded = []
    model.drop.register_forward_hook(lambda mod, inp, out: embedded.append(out))
    ids = torch.randint(0, V, (1, 4 * n))
    o1 = model.forward_segment(ids[:, :n])
    assert all(not m.requires_grad for m in o1.state["layers"])
    o2 = model.forward_segment(ids[:, n:2 * n], o1.state)
    e1, e2 = embedded
    g1, g2 = torch.autograd.grad(o2.logits.sum(), [e1, e2], allow_unused=True,
                                 retain_graph=True)
    assert g1 is None and g2 is not None and g2.abs().sum() > 0
    o2.logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

    model.eval()

    def last_segment(x):
        with torch.no_grad():
            return stream_logits(model, x, n)[0][:, 3 * n:]

    base = last_segment(ids)
    for seg_idx, changes in ((0, False), (1, True), (2, True)):
        other = ids.clone()
        other[0, seg_idx * n] = (other[0, seg_idx * n] + 1) % V
        changed = not torch.equal(last_segment(other), base)
        assert changed == changes, f"segment {seg_idx}"
    with torch.no_grad():                                       # the long pass sees segment 0
        other = ids.clone()
        other[0, 0] = (other[0, 0] + 1) % V
        assert not torch.equal(model(other).logits[:, 3 * n:], model(ids).logits[:, 3 * n:])


def test_default_forward_is_unchanged_and_memory_adds_no_weights():
    plain = _model(8, memory=None)
    xl = _model(8)
    assert plain.state_dict().keys() == xl.state_dict().keys()
    ids = torch.randint(0, V, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(xl(ids).logits, plain(ids).logits, atol=0, rtol=0)


@pytest.mark.parametrize("over,field", [
    ({"arch": "bert"}, "model.arch"),
    ({"causal": False}, "model.causal"),
    ({"ffn": {"name": "moe", "experts": 2}}, "model.ffn"),
    ({"mixer": {"name": "perceiver_cross"}}, "model.mixer"),
    ({"layout": "a c f"}, "model.layout"),
    ({"memory": {"name": "xl_memory"}}, "model.memory.mem_len"),
])
def test_combinations_that_cannot_work_are_one_line_errors(over, field):
    cfg = {"arch": "gpt", "vocab_size": V, "d_model": 16, "n_layers": 2, "max_len": 64,
           "mixer": {"name": "softmax", "heads": 2}, "memory": {"name": "xl_memory", "mem_len": 4},
           **over}
    with pytest.raises(ConfigError) as e:
        tevo.build_model(cfg)
    msg = str(e.value)
    assert msg.startswith(field) and "\n" not in msg
    if field != "model.memory.mem_len":
        assert "(valid: " in msg


def test_padding_after_a_real_token_and_a_missing_memory_are_refused():
    model = _model(4)
    ids = torch.randint(0, V, (1, 4))
    with pytest.raises(InputError, match="left padding"):
        model.forward_segment(ids, attention_mask=torch.tensor([[1, 1, 0, 1]]))
    mem = model.forward_segment(ids).state
    with pytest.raises(InputError, match="left padding"):     # padding after the memory's tokens
        model.forward_segment(ids, mem, attention_mask=torch.tensor([[0, 1, 1, 1]]))
    with pytest.raises(ConfigError, match="model.memory"):
        _model(4, memory=None).forward_segment(ids)


def test_trained_with_its_memory_a_one_layer_model_copies_from_the_previous_segment(tmp_path):
    """Training as in the paper (§3.2: the corpus read in order, the memory carried across
    steps, stop-gradient): a stream of blocks r + R, r 16 random letters of a…p and R the same
    letters upper-cased, read in segments of 16. Each upper-case letter is the letter 16 places
    back, in an earlier segment for 15 of every 16 positions: only a model that reads the
    previous segment can predict it. With the same budget (600 steps, 1 layer) the xl_memory run learns to copy (train loss
    ≈ ln 16 / 2: only the random half left) and the plain run cannot (≈ ln 16); validation too,
    where each lane's first segment starts from an empty memory."""
    import math
    import random

    from tevo.config import load_config
    from tevo.train.log import read_metrics
    from tevo.train.trainer import train

    rng = random.Random(0)
    blocks = ["".join(rng.choice("abcdefghijklmnop") for _ in range(16)) for _ in range(1500)]
    corpus = tmp_path / "copy.txt"
    corpus.write_text("".join(r + r.upper() + "\n" for r in blocks))
    base = [f"data.path={corpus}", "data.seq_len=16", "model.d_model=32", "model.n_layers=1",
            "model.max_len=16", "model.mixer={name: softmax, heads: 2}",
            "model.position=xl_relative", "train.batch_size=8", "train.steps=600",
            "train.warmup=10", "train.lr=1e-2", "train.log_every=10", "train.eval_every=0",
            "train.ckpt_every=0", "train.final_eval_batches=null", "train.sample_tokens=0",
            "train.progress=false", "train.plot=false", "train.max_minutes=null",
            "train.precision=fp32", "train.threads=1"]
    runs = {}
    for name, extra in (("xl", ["model.memory={name: xl_memory, mem_len: 16}"]), ("plain", [])):
        s = train(load_config("default", [*base, *extra, f"train.out_dir={tmp_path / name}"]))
        tr = [r["loss"] for r in read_metrics(tmp_path / name) if r.get("split") == "train"]
        assert all(math.isfinite(x) for x in tr) and tr[-1] < tr[0]
        runs[name] = (sum(tr[-5:]) / 5, s["final_val_loss"])
    (xl_train, xl_val), (plain_train, plain_val) = runs["xl"], runs["plain"]
    ln16 = math.log(16)
    assert xl_train < 0.6 * ln16 and plain_train > 0.95 * ln16, runs
    assert xl_train < plain_train - 1.0 and xl_val < plain_val - 0.5, runs
