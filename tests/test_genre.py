"""The genre task (Shakespeare passages → comedy / tragedy / history / poem, split by whole
works), the text-classification head and ``tevo finetune``."""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

import tevo
from tevo.data.corpora import shakespeare_works
from tevo.errors import ConfigError
from tevo.registry import OBJECTIVES, TASKS
from tevo.tasks.genre import GENRES, WORK_GENRE


@pytest.fixture(scope="module")
def task():
    return TASKS.build("genre")


def test_genre_passages_labels_and_whole_work_splits(task):
    works = shakespeare_works()
    assert {k for k, _, _ in works} == set(WORK_GENRE)            # every work has a genre
    assert set(WORK_GENRE.values()) == set(GENRES)
    splits = task.splits()
    seen = {}
    texts = {k: t for k, _, t in works}
    for split, rows in splits.items():
        for text, label, work in rows:
            assert len(text) == 256 and GENRES[label] == WORK_GENRE[work]
            assert seen.setdefault(work, split) == split          # no work in two splits
        genres = {GENRES[lab] for _, lab, _ in rows}
        assert genres == set(GENRES), split                       # every genre in every split
    for work, text in texts.items():                              # consecutive passages
        mine = [t for t, _, w in splits[seen[work]] if w == work]
        assert "".join(mine) == text[:256 * (len(text) // 256)]
    ch = task.chance("test")
    counts = Counter(lab for _, lab, _ in splits["test"])
    assert ch["majority_accuracy"] == max(counts.values()) / len(splits["test"])
    assert ch["majority_class"] == GENRES[counts.most_common(1)[0][0]]
    with pytest.raises(ConfigError, match="task.genre.chars"):
        TASKS.build({"name": "genre", "chars": 2})
    with pytest.raises(ConfigError, match="unknown work"):
        TASKS.build({"name": "genre", "test_works": ["nonsense"]})


def test_text_classification_head_pools_and_scores():
    with pytest.raises(ConfigError, match="objective.classes"):
        OBJECTIVES.build({"name": "text_classification"})
    with pytest.raises(ConfigError, match="objective.pooling"):
        OBJECTIVES.build({"name": "text_classification", "classes": 4, "pooling": "max"})
    obj = OBJECTIVES.build({"name": "text_classification", "classes": 4}).setup(50, {})
    ids = torch.randint(0, 50, (3, 10))
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1, 6:] = False                                           # a right-padded passage
    labels = torch.tensor([0, 3, 1])
    gpt = tevo.build_model(None, arch="gpt", n_layers=1, d_model=16, vocab_size=50,
                           mixer={"name": "softmax", "heads": 2}).eval()
    obj.attach(gpt)
    f, _ = obj.features(gpt, ids, mask)                           # causal: the last real token
    h = gpt(ids[1:2, :6], return_hidden=True).hidden
    assert torch.allclose(f[1], h[0, 5], atol=1e-5)
    loss, m = obj(gpt, {"input_ids": ids, "attention_mask": mask, "labels": labels})
    ref = F.cross_entropy(gpt.objective_modules["classifier"](f), labels)
    assert torch.allclose(loss, ref, atol=1e-6) and m["accuracy"][1] == 3
    bert = tevo.build_model("bert", n_layers=1, d_model=16, vocab_size=50, max_len=16,
                            n_segments=0, dropout=0.0, mixer={"name": "softmax", "heads": 2})
    bert.eval()
    obj.attach(bert)
    f, _ = obj.features(bert, ids, mask)                          # encoder: mean of real tokens
    h = bert(ids[1:2, :6]).hidden
    assert torch.allclose(f[1], h[0].mean(0), atol=1e-5)
    with pytest.raises(ConfigError, match="label 4 is out of range"):
        obj(bert, {"input_ids": ids, "labels": torch.tensor([0, 4, 1])})
    with pytest.raises(ConfigError, match="objective.norm"):
        OBJECTIVES.build({"name": "text_classification", "classes": 4, "norm": "layer"})
    bn = OBJECTIVES.build({"name": "text_classification", "classes": 4, "norm": "batchnorm"})
    bn.setup(50, {}).attach(bert)
    bert.train()
    f, _ = bn.features(bert, ids, mask)
    z = bert.objective_modules["feature_norm"](f)                 # standardised over the batch
    want = (f - f.mean(0)) / torch.sqrt(f.var(0, unbiased=False) + 1e-5)
    assert torch.allclose(z, want, atol=1e-4) and torch.allclose(z.mean(0), torch.zeros(16),
                                                                 atol=1e-5)
    loss, _ = bn(bert, {"input_ids": ids, "attention_mask": mask, "labels": labels})
    ref = F.cross_entropy(bert.objective_modules["classifier"](z), labels)
    assert torch.allclose(loss, ref, atol=1e-5)
    assert not any(p.requires_grad for p in bert.objective_modules["feature_norm"].parameters())


def test_genre_data_refuses_a_tokenizer_that_cannot_encode_it(task):
    from tevo.data.labelled import LabelledTextData
    from tevo.data.tokenizer import build_tokenizer
    tok = build_tokenizer("chars", "abcdefgh ")
    with pytest.raises(ConfigError, match="cannot encode the task's text"):
        LabelledTextData(task, tok)


def test_finetune_genre_starts_from_the_pretrained_weights(tmp_path):
    from tevo.config import load_config
    from tevo.data.corpora import ShakespeareCorpus
    from tevo.train.checkpoint import latest_checkpoint, load_weights
    from tevo.train.finetune import finetune, finetune_config
    from tevo.train.trainer import train
    text = tmp_path / "part.txt"
    text.write_text(ShakespeareCorpus().splits()["train"][:20_000])
    common = ["model.d_model=16", "model.n_layers=1", "model.max_len=256",
              "model.mixer={name: softmax, heads: 2}", "train.batch_size=4", "train.threads=1",
              "train.progress=false", "train.plot=false", "train.precision=fp32"]
    pre = tmp_path / "pre"
    train(load_config("default", [f"data.path={text}", "data.seq_len=32", "train.steps=3",
                                  "train.eval_every=0", "train.final_eval_batches=1",
                                  "train.sample_tokens=0", "train.max_minutes=null",
                                  f"train.out_dir={pre}", *common]))
    cfg = finetune_config(pre, "genre", [f"train.out_dir={tmp_path / 'ft0'}"])
    assert cfg.objective == {"name": "text_classification", "classes": 4}
    from tevo.train.trainer import Trainer
    tr = Trainer(cfg)                                             # starts from the pre-trained
    ref = tevo.build_model(cfg.model)
    load_weights(ref, latest_checkpoint(pre) / "model.safetensors")
    assert torch.equal(tr.model.embed.weight, ref.embed.weight)
    cold = finetune_config(pre, "genre", [f"train.out_dir={tmp_path / 'ft1'}"], pretrained=False)
    assert "init_from" not in cold.train.extra and cold.model == cfg.model
    assert not torch.equal(Trainer(cold).model.embed.weight, ref.embed.weight)  # random init
    s = finetune(pre, "genre", ["train.steps=4", "train.eval_every=0",
                                "train.final_eval_batches=2", *common[4:]])
    assert 0.0 <= s["test_accuracy"] <= 1.0 and s["chance"]["examples"] > 1000
    saved = json.loads((tmp_path / "pre" / "finetune-genre" / "summary.json").read_text())
    assert saved["test_accuracy"] == s["test_accuracy"]
    with pytest.raises(ConfigError, match="not a labelled text task"):
        finetune_config(pre, "copy")


@pytest.mark.slow
def test_bench_objectives_runs_and_reports(tmp_path):
    from tevo.bench._run import run
    reps = run("objectives", objectives=["mlm", "electra", "span"], seeds=[0],
               pretrain_minutes=0.03, finetune_steps=2, d_model=16, n_layers=1, heads=2,
               seq_len=32, batch_size=4, threads=1, work_dir=str(tmp_path / "runs"),
               out=str(tmp_path / "out"))
    rep = reps[0]
    assert not rep.errors, rep.errors
    rows = rep.data["rows"]
    assert [r["objective"] for r in rows] == ["mlm", "electra", "none", "span"]   # claim first
    assert all(0 <= r["test_accuracy"] <= 1 for r in rows)
    assert [r["pretrain_steps"] >= 1 for r in rows] == [True, True, False, True]
    md = (tmp_path / "out" / "objectives.md").read_text()
    assert "genre test accuracy" in md and "ELECTRA's claim" in md and "Budget" in md
    assert "No pre-training" in md and "0.03 CPU minutes" in md
    again = run("objectives", objectives=["mlm", "electra", "span"], seeds=[0],    # resumes
                pretrain_minutes=0.03, finetune_steps=2, d_model=16, n_layers=1, heads=2,
                seq_len=32, batch_size=4, threads=1, work_dir=str(tmp_path / "runs"),
                out=str(tmp_path / "out2"))[0]
    def strip(rs):
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in rs]
    assert strip(again.data["rows"]) == strip(rows)             # read back, not run again


def test_objectives_verdicts_follow_the_paired_interval():
    from tevo.bench.objectives import control_sentence, electra_sentence
    from tevo.train.sweep import paired_difference
    e, m = (0.45, 0.01, 3), (0.40, 0.01, 3)
    up = paired_difference([0.45, 0.46, 0.44], [0.40, 0.41, 0.39])        # every seed +0.05
    assert "reproduces the claim" in electra_sentence(up, e, m)
    down = paired_difference([0.40, 0.41, 0.39], [0.45, 0.46, 0.44])
    assert "does not reproduce" in electra_sentence(down, m, e)
    noisy = paired_difference([0.45, 0.30, 0.50], [0.40, 0.41, 0.39])
    assert not noisy["lo"] > 0 and "no measurable difference" in electra_sentence(noisy, e, m)
    one = paired_difference([0.45], [0.40])                       # one seed measures nothing
    assert "no measurable difference" in electra_sentence(one, e, m)
    means = {"mlm": e, "clm": m, "none": (0.30, 0.01, 3)}
    diffs = {"mlm_minus_none": up, "clm_minus_none": down}
    s = control_sentence(means, diffs, {"majority_accuracy": 0.337})
    assert "better than it: mlm;" in s and "worse: clm;" in s and "0.337" in s
