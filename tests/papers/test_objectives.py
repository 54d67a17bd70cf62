"""Objectives: next-token CE (+ aux), BERT's 80/10/10 masking statistics and NSP pairs, label
smoothing's definition and optimum, and bits-per-character conversion."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import tevo
from tevo.models.common import ModelOutput
from tevo.registry import OBJECTIVES


class _Fixed(torch.nn.Module):
    """A stand-in model returning given logits and auxiliary loss."""
    causal = True

    def __init__(self, logits, aux=0.0):
        super().__init__()
        self.logits, self.aux = logits, aux

    def forward(self, ids, attention_mask=None, **kw):
        return ModelOutput(self.logits, aux_loss=self.aux)


def test_clm_is_next_token_cross_entropy_plus_aux():
    torch.manual_seed(0)
    V = 11
    logits = torch.randn(2, 5, V)
    labels = torch.randint(0, V, (2, 5))
    labels[0, :2] = -100
    obj = OBJECTIVES.build("clm").setup(V, {})
    loss, m = obj(_Fixed(logits, torch.tensor(0.25)), {"input_ids": labels.clamp(min=0),
                                                       "labels": labels})
    logp = logits.log_softmax(-1)
    keep = labels != -100
    ref = -logp[keep].gather(-1, labels[keep][:, None]).mean()
    torch.testing.assert_close(loss, ref + 0.25)
    s, c = m["loss"]
    torch.testing.assert_close((s / c).float(), ref)
    assert int(c) == 8 and "exact_match" in m
    # a real model: the objective's loss equals F.cross_entropy on shifted tokens
    model = tevo.build_model("gpt2", n_layers=1, d_model=16, vocab_size=V, max_len=16,
                             dropout=0.0, mixer={"name": "softmax", "heads": 2})
    ids = torch.randint(0, V, (3, 9))
    loss, _ = obj(model, {"input_ids": ids[:, :-1], "labels": ids[:, 1:]})
    ref = F.cross_entropy(model(ids[:, :-1]).logits.reshape(-1, V), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, ref)


def test_mlm_masking_statistics_are_15_80_10_10():
    V = 100
    obj = OBJECTIVES.build("mlm").setup(V + 1, {"[MASK]": V})
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (400, 500), generator=g)
    protect = torch.zeros_like(ids, dtype=torch.bool)
    protect[:, :50] = True
    inputs, labels = obj.mask_tokens(ids, protect, generator=g)
    chosen = labels != -100
    assert not chosen[:, :50].any()                           # protected positions never chosen
    assert torch.equal(labels[chosen], ids[chosen])
    assert (inputs[~chosen] == ids[~chosen]).all()
    n = chosen.sum().item()
    frac = n / (400 * 450)
    assert abs(frac - 0.15) < 0.003, frac
    masked = (inputs[chosen] == V).float().mean().item()
    same = (inputs[chosen] == ids[chosen]).float().mean().item()
    other = 1 - masked - same
    # random replacements hit the original token with probability 1/V
    assert abs(masked - 0.8) < 0.005, masked
    assert abs(same - (0.1 + 0.1 / V)) < 0.005, same
    assert abs(other - 0.1 * (1 - 1 / V)) < 0.005, other
    assert (inputs[chosen] <= V).all() and (inputs[chosen & (inputs != V)] < V).all()


def test_mlm_nsp_pairs_and_loss_on_bert():
    V = 40
    specials = {"[MASK]": V, "[CLS]": V + 1, "[SEP]": V + 2}
    obj = OBJECTIVES.build({"name": "mlm", "nsp": True}).setup(V + 3, specials)
    ids = torch.randint(0, V, (64, 21))
    seq, types, rnd, protect = obj.make_pairs(ids)
    la = (21 - 3) // 2
    assert seq.shape == (64, 21) and (seq[:, 0] == V + 1).all()
    assert (seq[:, la + 1] == V + 2).all() and (seq[:, -1] == V + 2).all()
    assert torch.equal(seq[:, 1:la + 1], ids[:, :la])
    nxt = rnd == 0
    assert torch.equal(seq[nxt, la + 2:-1], ids[nxt, la:la + 9])
    assert (types[:, :la + 2] == 0).all() and (types[:, la + 2:] == 1).all()
    assert 10 < int(rnd.sum()) < 54
    model = tevo.build_model("bert", n_layers=1, d_model=16, vocab_size=V + 3, max_len=32,
                             dropout=0.0, mixer={"name": "softmax", "heads": 2})
    obj.check_model(model)
    loss, m = obj(model, {"input_ids": ids})
    assert torch.isfinite(loss) and "nsp_accuracy" in m
    loss.backward()
    assert model.nsp.weight.grad is not None and model.embed.weight.grad is not None


def test_seq2seq_label_smoothing_matches_definition_and_optimum():
    from tevo.objectives.seq2seq import label_smoothed_nll
    torch.manual_seed(0)
    V, eps = 7, 0.1
    logits = torch.randn(3, 4, V, requires_grad=True)
    labels = torch.randint(0, V, (3, 4))
    smooth, nll = label_smoothed_nll(logits, labels, eps)
    ref = F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), label_smoothing=eps,
                          reduction="sum")
    torch.testing.assert_close(smooth, ref)
    torch.testing.assert_close(nll, F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1),
                                                    reduction="sum"))
    # the minimiser is the smoothed target q' = (1-ε)·onehot + ε/V: zero gradient there
    q = torch.full((3, 4, V), eps / V).scatter(-1, labels[..., None], 1 - eps + eps / V)
    opt_logits = q.log().requires_grad_(True)
    s, _ = label_smoothed_nll(opt_logits, labels, eps)
    (g,) = torch.autograd.grad(s, opt_logits)
    assert g.abs().max() < 1e-6
    # on an encoder-decoder, the objective's loss is the smoothed mean and 'loss' the NLL
    model = tevo.build_model("transformer", n_layers=1, n_dec_layers=1, d_model=16,
                             vocab_size=12, max_len=16, dropout=0.0,
                             mixer={"name": "softmax", "heads": 2})
    obj = OBJECTIVES.build({"name": "seq2seq", "label_smoothing": eps}).setup(
        12, {"[BOS]": 10, "[EOS]": 11})
    src, tgt = torch.randint(0, 10, (2, 5)), torch.randint(0, 12, (2, 6))
    loss, m = obj(model, {"src_ids": src, "tgt_ids": tgt})
    lg = model(src, tgt[:, :-1]).logits
    torch.testing.assert_close(loss, F.cross_entropy(lg.reshape(-1, 12), tgt[:, 1:].reshape(-1),
                                                     label_smoothing=eps))
    torch.testing.assert_close((m["loss"][0] / m["loss"][1]).float(),
                               F.cross_entropy(lg.reshape(-1, 12), tgt[:, 1:].reshape(-1)))


def test_bits_per_character_from_chars_per_token():
    obj = OBJECTIVES.build("clm")
    d = obj.derived({"loss": math.log(2) * 3.0}, {"chars_per_token": 4.0, "bytes_per_token": 5.0})
    assert abs(d["bits_per_token"] - 3.0) < 1e-12
    assert abs(d["bits_per_char"] - 0.75) < 1e-12 and abs(d["bits_per_byte"] - 0.6) < 1e-12
    assert abs(d["perplexity"] - 8.0) < 1e-9
    mlm = OBJECTIVES.build("mlm").derived({"loss": 1.0}, {"chars_per_token": 1})
    assert "bits_per_char" not in mlm
