"""Paper tests of the pre-training objectives beyond CLM and MLM: DecBERT, T5 span corruption,
ELECTRA, XLNet's permutation LM, Transcormer's sliding LM and the Cramming recipe."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tevo
from tevo.errors import ConfigError
from tevo.objectives.base import IGNORE
from tevo.objectives.plm import two_stream_masks
from tevo.objectives.span import (corrupt, corrupted_lengths, input_and_target_lengths,
                                  random_spans_noise_mask)
from tevo.registry import OBJECTIVES

V = 40
SPECIALS = {"[MASK]": V, "[BOS]": V + 1, "[EOS]": V + 2}


def bert(causal=False, position="learned", mixer=None, d=16, layers=2):
    return tevo.build_model("bert", n_layers=layers, d_model=d, vocab_size=V + 3, max_len=64,
                            dropout=0.0, causal=causal, position=position, init_std=0.2,
                            mixer=mixer or {"name": "softmax", "heads": 2}).eval()


def objective(name, **kw):
    return OBJECTIVES.build({"name": name, **kw}).setup(V + 3, SPECIALS)


# -- DecBERT --------------------------------------------------------------------------------
def test_decbert_is_mlm_under_causal_masks():
    obj = objective("decbert")
    model = bert(causal=True)
    obj.check_model(model)
    ids = torch.randint(0, V, (4, 20))
    # causal masks: the prediction at t reads only x_≤t
    a = model(ids).logits
    ids2 = ids.clone()
    ids2[:, 12:] = torch.randint(0, V, (4, 8))
    b = model(ids2).logits
    assert torch.allclose(a[:, :12], b[:, :12], atol=1e-5)
    assert not torch.allclose(a[:, 12:], b[:, 12:], atol=1e-3)
    # the loss is BERT's: CE at the chosen positions of the 80/10/10 corruption
    torch.manual_seed(3)
    loss, m = obj(model, {"input_ids": ids})
    torch.manual_seed(3)
    inputs, labels = obj.mask_tokens(ids)
    ref = F.cross_entropy(model(inputs).logits.flatten(0, 1), labels.flatten(),
                          ignore_index=IGNORE)
    assert torch.allclose(loss, ref, atol=1e-6)
    # the pairing is exclusive: mlm wants a bidirectional encoder, decbert a causal one
    with pytest.raises(ConfigError, match="decbert needs"):
        obj.check_model(bert(causal=False))
    with pytest.raises(ConfigError, match="decbert needs"):
        obj.check_model(tevo.build_model(None, arch="gpt", n_layers=1, d_model=16, vocab_size=V + 3))
    with pytest.raises(ConfigError, match="mlm needs"):
        objective("mlm").check_model(model)


# -- T5 span corruption ---------------------------------------------------------------------
def test_span_corruption_lengths_match_t5_formula():
    # T5's compute_input_and_target_lengths for its 512-token inputs
    assert input_and_target_lengths(512) == (568, 114)
    for inputs in (64, 128, 256):         # the longest raw window that corrupts to `inputs`
        raw, targets = input_and_target_lengths(inputs)
        assert corrupted_lengths(raw) == (inputs, targets) or corrupted_lengths(raw)[0] < inputs
        assert corrupted_lengths(raw + 1)[0] > inputs
    g = torch.Generator().manual_seed(0)
    sizes = set()
    for L in range(10, 400, 13):
        noise = random_spans_noise_mask(L, 0.15, 3.0, g)
        n_noise = int(round(L * 0.15))
        n_spans = int(round(n_noise / 3))
        starts = noise & ~F.pad(noise, (1, 0))[:-1]
        assert int(noise.sum()) == n_noise and int(starts.sum()) == n_spans
        assert not bool(noise[0])                              # a window starts with kept text
        ids = torch.arange(L)
        sent = list(range(1000, 1000 + n_spans))
        inp, tgt = corrupt(ids, noise, sent, -1)
        assert (len(inp), len(tgt)) == corrupted_lengths(L)
        assert (len(inp), len(tgt)) == (L - n_noise + n_spans + 1, n_noise + n_spans + 1)
        # inputs and targets interleave back into the window through the sentinels
        pieces, cur, out = {}, None, []
        for t in tgt[:-1].tolist():
            if t >= 1000:
                cur = t
                pieces[cur] = []
            else:
                pieces[cur].append(t)
        for t in inp[:-1].tolist():
            out += pieces[t] if t >= 1000 else [t]
        assert out == ids.tolist()
        sizes |= {len(p) for p in pieces.values()}
    assert len(sizes) > 3                                       # random span lengths, mean 3
    # on an encoder-decoder: the batch has the formula's shapes; other models are refused
    model = tevo.build_model("transformer", n_layers=1, d_model=16, vocab_size=V + 3 + 8,
                             max_len=64, mixer={"name": "softmax", "heads": 2}).eval()
    obj = OBJECTIVES.build({"name": "span", "sentinels": 8}).setup(
        V + 3 + 8, {**SPECIALS, **{f"<extra_id_{i}>": V + 3 + i for i in range(8)}})
    obj.check_model(model)
    ids = torch.randint(0, V, (3, 40))
    b = obj.make_batch(ids)
    n_in, n_tgt = corrupted_lengths(40)
    assert b["src_ids"].shape == (3, n_in) and b["tgt_ids"].shape == (3, n_tgt + 1)
    loss, m = obj(model, {"input_ids": ids})
    assert torch.isfinite(loss) and m["loss"][1] == 3 * n_tgt
    with pytest.raises(ConfigError, match="encoder-decoder"):
        obj.check_model(bert())
    with pytest.raises(ConfigError, match="objective.sentinels"):
        obj.make_batch(torch.randint(0, V, (1, 200)))
    with pytest.raises(ConfigError, match="noise_density"):
        OBJECTIVES.build({"name": "span", "noise_density": 1.5})


# -- ELECTRA --------------------------------------------------------------------------------
def test_electra_replaced_token_detection_and_joint_loss():
    obj = objective("electra")
    model = bert(d=32, mixer={"name": "softmax", "heads": 4})
    obj.check_model(model)
    obj.attach(model)
    gen = model.objective_modules["generator"]
    assert gen.cfg.d_model == 8 and gen.cfg.mixer["heads"] == 1            # 1/4 width
    assert gen.embed.table.weight is model.embed.weight                    # shared embeddings
    assert gen.head.table.weight is model.embed.weight
    ids = torch.randint(0, V, (6, 24))
    torch.manual_seed(5)
    c = obj.corrupt(model, ids)
    chosen = c["chosen"]
    assert chosen.any() and (c["masked"][chosen] == V).all()               # all [MASK]
    assert torch.equal(c["corrupted"][~chosen], ids[~chosen])
    assert torch.equal(c["replaced"], c["corrupted"] != ids)               # sampled == original
    # the joint loss: L_MLM + 50 · L_Disc over every token         counts as original
    torch.manual_seed(7)
    loss, m = obj(model, {"input_ids": ids})
    torch.manual_seed(7)
    c = obj.corrupt(model, ids)
    mlm = F.cross_entropy(c["gen_logits"], ids[c["chosen"]])
    d_logits, _ = obj.discriminate(model, c["corrupted"])
    disc = F.binary_cross_entropy_with_logits(d_logits, (c["corrupted"] != ids).float())
    assert torch.allclose(loss, mlm + 50.0 * disc, atol=1e-5)
    assert abs(m["disc_loss"][0] / m["disc_loss"][1] - float(disc.detach())) < 1e-5
    # no gradient reaches the generator through the sampled tokens
    (50.0 * disc).backward()
    blocks = [p for n, p in gen.named_parameters() if n.startswith("blocks.")]
    assert all(p.grad is None or float(p.grad.abs().max()) == 0.0 for p in blocks)
    disc_blocks = [p for n, p in model.named_parameters() if n.startswith("blocks.")]
    assert any(p.grad is not None and float(p.grad.abs().max()) > 0 for p in disc_blocks)
    for bad in (None, 0, 1.5):
        with pytest.raises(ConfigError, match="objective.generator_size"):
            OBJECTIVES.build({"name": "electra", "generator_size": bad})
    with pytest.raises(ConfigError, match="electra"):
        obj.check_model(tevo.build_model(None, arch="gpt", n_layers=1, d_model=16, vocab_size=V + 3))


# -- XLNet permutation LM -------------------------------------------------------------------
def test_plm_two_stream_masks_are_xlnets():
    n, m = 9, 3
    perm = torch.stack([torch.randperm(n) for _ in range(4)])
    content, query, targets = two_stream_masks(perm, m)
    for b in range(4):
        z = perm[b].tolist()                                   # factorisation order
        rank = {tok: t for t, tok in enumerate(z)}
        assert targets[b].tolist() == z[n - m:]                # partial prediction: last n/K
        for i in range(n):
            for j in range(n):                                 # content: z_≤t, itself included
                assert bool(content[b, i, j]) == (rank[j] <= rank[i])
        for k, tok in enumerate(z[n - m:]):
            for j in range(n):                                 # query: z_<t, never itself
                assert bool(query[b, k, j]) == (rank[j] < rank[tok])
            assert not bool(query[b, k, tok])
    obj = objective("plm", K=3)
    for position in ("learned", "xl_relative"):
        model = bert(position=position)
        obj.check_model(model)
        ids = torch.randint(0, V, (2, 12))
        perm = torch.stack([torch.randperm(12) for _ in range(2)])
        out, tg = obj.streams(model, ids, perm)
        logits = out.logits.view(2, 4, -1)
        # the query stream of z_t never reads x_{z_t}: changing it leaves its prediction as is
        for k in range(4):
            ids2 = ids.clone()
            ids2[0, tg[0, k]] = (ids[0, tg[0, k]] + 1) % V
            l2 = obj.streams(model, ids2, perm)[0].logits.view(2, 4, -1)
            assert torch.allclose(l2[0, k], logits[0, k], atol=1e-5)
            earlier = perm[0, 0]                               # first in the order: seen by all
            ids3 = ids.clone()
            ids3[0, earlier] = (ids[0, earlier] + 1) % V
            l3 = obj.streams(model, ids3, perm)[0].logits.view(2, 4, -1)
            assert not torch.allclose(l3[0, k], logits[0, k], atol=1e-4)
    # the identity order: the content stream is a causal LM (same weights, causal masks)
    model = bert()
    causal = bert(causal=True)
    causal.load_state_dict(model.state_dict())
    ids = torch.randint(0, V, (2, 12))
    out, _ = obj.streams(model, ids, torch.arange(12).expand(2, 12))
    assert torch.allclose(out.hidden[:, :12], causal(ids).hidden, atol=1e-5)
    loss, m = obj(model, {"input_ids": ids})
    assert torch.isfinite(loss) and m["loss"][1] == 2 * 4
    # models without two-stream support are refused
    with pytest.raises(ConfigError, match="plm needs a bidirectional encoder"):
        obj.check_model(tevo.build_model(None, arch="gpt", n_layers=1, d_model=16, vocab_size=V + 3))
    with pytest.raises(ConfigError, match="no two-stream support"):
        obj.check_model(bert(mixer={"name": "linear", "heads": 2}))
    with pytest.raises(ConfigError, match="objective.K"):
        OBJECTIVES.build({"name": "plm", "K": 1})


# -- Transcormer sliding LM -----------------------------------------------------------------
def naive_conditional(model, ids, t):
    """log p(x_t | x_<t, x_>t) from one call holding only the streams x_t's query needs:
    forward rows x_0..x_{t-1} (causal), backward rows x_{t+1}..x_{n-1} (anti-causal), and one
    query row at position t that reads all of them."""
    n = ids.shape[1]
    f, b = t, n - t - 1
    x = torch.cat([ids[:, :t], ids[:, t + 1:], torch.tensor([[V]])], 1)
    pos = torch.cat([torch.arange(t), torch.arange(t + 1, n), torch.tensor([t])])[None]
    N = f + b + 1
    mask = torch.zeros(N, N, dtype=torch.bool)
    for i in range(f):
        for j in range(f):
            mask[i, j] = j <= i
    for i in range(b):
        for j in range(b):
            mask[f + i, f + j] = j >= i
    mask[N - 1, :N - 1] = True
    out = model(x, positions=pos, attn_mask=mask[None])
    return out.logits[0, -1].float().log_softmax(-1)[ids[0, t]]


def test_slm_one_pass_score_equals_naive_loop():
    obj = objective("slm")
    model = bert()
    obj.check_model(model)
    ids = torch.randint(0, V, (1, 10))
    score = obj.score(model, ids)
    with torch.no_grad():
        naive = sum(naive_conditional(model, ids, t) for t in range(10))
    assert torch.allclose(score, naive.reshape(1), atol=1e-4)
    lp, _ = obj.log_probs(model, ids)
    ids2 = ids.clone()
    ids2[0, 4] = (ids[0, 4] + 1) % V                  # x_t is not in its own condition
    out2 = obj.log_probs(model, ids2)[0]
    with torch.no_grad():
        assert torch.allclose(out2[0, 4] - naive_conditional(model, ids2, 4), torch.zeros(()),
                              atol=1e-4)
    loss, m = obj(model, {"input_ids": ids})
    assert torch.allclose(loss, -lp.mean(), atol=1e-6)
    with pytest.raises(ConfigError, match="slm needs"):
        obj.check_model(bert(causal=True))


# -- Cramming -------------------------------------------------------------------------------
def test_cramming_sparse_prediction_equals_mlm_and_stops_on_time(tmp_path):
    obj = objective("cramming")
    model = bert()
    obj.check_model(model)
    ids = torch.randint(0, V, (4, 24))
    torch.manual_seed(11)
    loss, m = obj(model, {"input_ids": ids})
    torch.manual_seed(11)
    ref, _ = objective("mlm")(model, {"input_ids": ids})
    assert torch.allclose(loss, ref, atol=1e-6)
    torch.manual_seed(11)
    inputs, labels = obj.mask_tokens(ids)
    chosen = labels != IGNORE
    assert model(inputs, predict=chosen).logits.shape == (int(chosen.sum()), V + 3)
    # the recipe: `tevo train cramming` runs until its wall-clock budget and stops on time
    from tevo.config import load_config
    from tevo.data.corpora import ShakespeareCorpus
    from tevo.train.trainer import train
    text = tmp_path / "part.txt"
    text.write_text(ShakespeareCorpus().splits()["train"][:40_000])
    budget = 0.05
    s = train(load_config("cramming", [
        f"data.path={text}", "data.seq_len=32", "model.max_len=32", "model.d_model=32",
        "model.n_layers=2", "train.batch_size=8", f"train.max_minutes={budget}",
        "train.threads=1", "train.precision=fp32", "train.progress=false", "train.plot=false",
        "train.final_eval_batches=2", f"train.out_dir={tmp_path / 'cram'}"]))
    assert s["stopped"] == "time budget" and 1 < s["steps"] < 1_000_000
    step = s["train_seconds"] / s["steps"]
    assert s["train_seconds"] <= 60 * budget + 2 * step + 0.5
