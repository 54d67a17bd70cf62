"""Beam search for decoder-only models: every cache-capable mixer's state reorders by beam;
one beam is greedy; a beam as wide as the tree finds the most likely continuation; the same
tokens and scores as transformers' ``generate(num_beams=...)``; left padding; the CLI."""
from __future__ import annotations

import itertools

import pytest
import torch

import tevo
from tevo import cli
from tevo.errors import InputError
from tevo.inference.beam import beam_search, reorder_state
from tevo.inference.generate import generate
from tevo.registry import INFERENCE, MIXERS


def _model(vocab=40, max_len=24, mixer=None, d=32, seed=0):
    torch.manual_seed(seed)
    return tevo.build_model("gpt2", n_layers=2, d_model=d, vocab_size=vocab, max_len=max_len,
                            dropout=0.0, mixer=mixer or {"name": "softmax", "heads": 4}).eval()


def _logprob(model, prompt: torch.Tensor, cont: torch.Tensor) -> torch.Tensor:
    """Σ_t log p(cont_t | prompt, cont_<t) by one full pass; prompt (B, n), cont (B, m) -> (B,)."""
    n = prompt.shape[1]
    lp = model(torch.cat([prompt, cont], 1)).logits.float().log_softmax(-1)
    return lp[:, n - 1:-1].gather(-1, cont[..., None])[..., 0].sum(-1)


CACHED = [n for n in MIXERS.names() if MIXERS.get(n).supports.cache
          and MIXERS.get(n).supports.causal]


@pytest.mark.parametrize("name", CACHED)
def test_every_cached_mixer_state_reorders_along_the_batch(name):
    """Prefill two prompts, reorder the state with [1, 0, 1], step one token: the same logits
    as prefilling the reordered prompts (so the batch is dim 0 of every state tensor)."""
    torch.manual_seed(0)
    model = tevo.build_model({"arch": "gpt"}, n_layers=2, d_model=16, vocab_size=11, max_len=64,
                             dropout=0.0, mixer={"name": name, **MIXERS.get(name).tiny}).eval()
    ids = torch.randint(0, 11, (2, 7))
    mask = None
    if MIXERS.get(name).supports.padding:
        mask = torch.ones(2, 7, dtype=torch.bool)
        mask[1, :2] = False                                   # row 1 left-padded
    idx = torch.tensor([1, 0, 1])
    nxt = torch.tensor([[3], [4], [5]])
    with torch.no_grad():
        st = model(ids, attention_mask=mask, state=model.init_state(2)).state
        got = model(nxt, state=reorder_state(st, idx, batch=2)).logits
        st = model(ids[idx], attention_mask=None if mask is None else mask[idx],
                   state=model.init_state(3)).state
        ref = model(nxt, state=st).logits
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_reorder_state_rejects_what_is_not_batch_first():
    st = {"layers": [{0: {"k": torch.zeros(2, 3)}}], "mask": None, "length": 4}
    out = reorder_state(st, torch.tensor([1, 1, 0]), batch=2)
    assert out["layers"][0][0]["k"].shape == (3, 3) and out["length"] == 4
    with pytest.raises(InputError, match=r"state\['layers'\]\[0\]\[0\]\['k'\] of shape \(2, 3\)"):
        reorder_state(st, torch.tensor([0]), batch=3)
    with pytest.raises(InputError, match="type object"):
        reorder_state({"x": object()}, torch.tensor([0]))


def test_one_beam_is_greedy():
    model = _model()
    assert INFERENCE.get("beam_search").obj is beam_search
    ids = torch.randint(0, 40, (3, 6))
    g = generate(model, ids, 12, greedy=True)
    assert torch.equal(beam_search(model, ids, 1, 12).sequences, g)
    # with eos, one beam and early stopping stop where greedy stops
    eos = int(g[0, 9])
    g = generate(model, ids, 12, greedy=True, eos_id=eos)
    out = beam_search(model, ids, 1, 12, eos_id=eos, early_stopping=True).sequences
    assert torch.equal(out, g[:, :out.shape[1]]) and (g[:, out.shape[1]:] == eos).all()


@pytest.mark.parametrize("alpha", [1.0, 0.0])
def test_exhaustive_width_finds_the_most_likely_continuation(alpha):
    """V=5, 3 new tokens, k = V² beams: nothing is pruned before the last step, so beam search
    returns the argmax over all 125 continuations (brute force) with score Σ log p / 3^α."""
    V, steps = 5, 3
    model = _model(vocab=V, d=16)
    prompt = torch.tensor([[1, 4, 2, 0]])
    conts = torch.tensor(list(itertools.product(range(V), repeat=steps)))     # (125, 3)
    with torch.no_grad():
        lp = _logprob(model, prompt.expand(len(conts), -1), conts)
    out = beam_search(model, prompt, V ** (steps - 1), steps, length_penalty=alpha)
    assert torch.equal(out.sequences[0, 4:], conts[lp.argmax()])
    torch.testing.assert_close(out.scores[0], lp.max() / steps ** alpha)


def test_beam_finds_a_more_likely_continuation_than_greedy():
    """Not a theorem for k < V^(steps-1), but on these prompts 4 beams never do worse than
    greedy and find a strictly better continuation for some."""
    model = _model(d=16, seed=1)
    ids = torch.randint(0, 40, (6, 5), generator=torch.Generator().manual_seed(0))
    g = generate(model, ids, 6, greedy=True)[:, 5:]
    b = beam_search(model, ids, 4, 6, length_penalty=0.0)
    with torch.no_grad():
        lg, lb = _logprob(model, ids, g), _logprob(model, ids, b.sequences[:, 5:])
    torch.testing.assert_close(b.scores, lb)                # α = 0: the plain log-probability
    assert (lb >= lg - 1e-6).all() and (lb > lg + 1e-4).any(), (lb, lg)


def test_left_padded_rows_equal_single_rows_and_cache_equals_no_cache():
    model = _model()
    ids = torch.randint(0, 40, (3, 7), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, :2] = False
    mask[2, :4] = False
    eos = 18                                                  # ends the rows at 4, 5, 6 tokens
    kw = dict(eos_id=eos, length_penalty=0.0, early_stopping=False)
    batch = beam_search(model, ids, 3, 10, attention_mask=mask, **kw)
    nocache = beam_search(model, ids, 3, 10, attention_mask=mask, use_cache=False, **kw)
    assert torch.equal(batch.sequences, nocache.sequences)
    torch.testing.assert_close(batch.scores, nocache.scores)
    for b in range(3):
        real = ids[b:b + 1, mask[b]]                              # (1, n_b) unpadded prompt
        one = beam_search(model, real, 3, 10, **kw)
        cont = one.sequences[0, real.shape[1]:]                   # (L_b,)
        assert torch.equal(batch.sequences[b, 7:7 + len(cont)], cont)
        assert (batch.sequences[b, 7 + len(cont):] == eos).all()  # shorter: padded with eos
        torch.testing.assert_close(batch.scores[b], one.scores[0])
    assert batch.sequences.shape[1] < 7 + 10                        # every beam ended early


def test_window_slides_past_the_learned_context():
    """30 new tokens past max_len=24: the cached path re-prefills the window, as generate does."""
    model = _model(max_len=24)
    ids = torch.randint(0, 40, (2, 6))
    a = beam_search(model, ids, 3, 30)
    b = beam_search(model, ids, 3, 30, use_cache=False)
    assert a.sequences.shape == (2, 36) and torch.equal(a.sequences, b.sequences)


@pytest.mark.parametrize("eos,early_stopping,alpha", [
    (None, False, 1.0), (9, True, 1.0), (9, False, 1.0), (10, True, 2.0), (10, "never", 2.0),
    (10, False, -1.0)])
def test_same_tokens_and_scores_as_transformers(eos, early_stopping, alpha):
    """A random GPT-2 imported from transformers: beam_search gives generate(num_beams=3,
    do_sample=False)'s tokens and sequence scores (the length penalty counts generated tokens
    only, as transformers does), on a left-padded batch where eos ends some beams early."""
    transformers = pytest.importorskip("transformers")
    from tevo.interop.compare import random_batch, randomize_
    from tevo.interop.hf import from_hf
    transformers.logging.set_verbosity_error()
    V = 11
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=V, n_positions=64,
                                  bos_token_id=None, eos_token_id=None,
                                  attn_implementation="eager")
    hf = randomize_(transformers.GPT2LMHeadModel(cfg).eval(), seed=0)
    model = from_hf(hf)
    ids, mask = random_batch(V, batch=3, n=6, left=True, seed=0)
    ref = hf.generate(ids, attention_mask=mask, num_beams=3, do_sample=False, max_new_tokens=8,
                      early_stopping=early_stopping, length_penalty=alpha, eos_token_id=eos,
                      pad_token_id=0 if eos is None else eos, output_scores=True,
                      return_dict_in_generate=True)
    out = beam_search(model, ids, 3, 8, eos_id=eos, length_penalty=alpha,
                      early_stopping=early_stopping, attention_mask=mask)
    assert torch.equal(out.sequences, ref.sequences), (out.sequences, ref.sequences)
    torch.testing.assert_close(out.scores, ref.sequences_scores, atol=1e-5, rtol=1e-5)


def test_bad_beam_inputs_are_one_line_errors():
    model = _model()
    x = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(InputError, match="num_beams"):
        beam_search(model, x, 0, 2)
    with pytest.raises(InputError, match="early_stopping"):
        beam_search(model, x, 2, 2, early_stopping="sometimes")
    with pytest.raises(InputError, match="empty"):
        beam_search(model, torch.zeros(1, 0, dtype=torch.long), 2, 2)
    assert torch.equal(beam_search(model, x, 2, 0).sequences, x)


def test_cli_beams(tmp_path, capsys):
    from tevo.data.corpora import ShakespeareCorpus
    corpus = tmp_path / "part.txt"
    corpus.write_text(ShakespeareCorpus().splits()["train"][:5_000])
    run = tmp_path / "r"
    assert cli.main(["train", f"data.path={corpus}", "data.seq_len=16", "model.d_model=16",
                     "model.n_layers=1", "model.max_len=16", "model.position=learned",
                     "model.mixer={name: softmax, heads: 2}", "train.batch_size=4",
                     "train.steps=1", "train.warmup=1", "train.eval_every=1",
                     "train.eval_batches=1", "train.final_eval_batches=1",
                     "train.sample_tokens=0", "train.progress=false", "train.max_minutes=null",
                     "train.precision=fp32",     # cached == uncached beams: exact arithmetic
                     f"train.out_dir={run}"]) == 0
    capsys.readouterr()
    base = ["generate", str(run), "--prompt", "KING", "--max-new-tokens", "6"]
    assert cli.main([*base, "--beams", "3"]) == 0
    a = capsys.readouterr().out
    assert a.startswith("KING")
    assert cli.main([*base, "--beams", "3", "--no-cache"]) == 0
    assert capsys.readouterr().out == a
    assert cli.main([*base, "--beams", "1", "--greedy"]) == 0        # 1 beam: greedy
    b = capsys.readouterr().out
    assert cli.main([*base, "--greedy"]) == 0
    assert capsys.readouterr().out == b
    assert cli.main([*base, "--beams", "3", "--top-k", "5", "--temperature", "0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert "--temperature, --top-k" in err
