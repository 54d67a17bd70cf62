"""The ``hf`` tokenizer (a Hugging Face tokenizer directory read with ``tokenizers``) and runs
converted with ``tevo convert --from-hf`` that generate and evaluate with their own tokenizer:
same ids and text as ``tokenizers`` and as ``transformers.generate``; wrong or missing files are
one-line errors."""
import json
import re
import shutil
import sys

import pytest
import torch

tokenizers = pytest.importorskip("tokenizers")

from tevo.cli import main  # noqa: E402
from tevo.config import load_config, save_config  # noqa: E402
from tevo.data.tokenizer import HFTokenizer, build_tokenizer, load_tokenizer  # noqa: E402
from tevo.errors import InputError  # noqa: E402

LINES = ["To be, or not to be, that is the question:",
         "Whether 'tis nobler in the mind to suffer",
         "The slings and arrows of outrageous fortune,",
         "Or to take arms against a sea of troubles"]
TEXT = "\n".join(LINES) + "\n"
EOS = "<|endoftext|>"
PROMPT = "To be, or"


def bpe(vocab_size: int = 300):
    """A tiny GPT-2-style byte-level BPE trained with ``tokenizers`` on LINES."""
    from tokenizers import decoders, models, pre_tokenizers, trainers
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(LINES * 4, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


# -- without transformers ---------------------------------------------------------------------
def test_hf_tokenizer_equals_tokenizers(tmp_path):
    tok = bpe()
    d = tmp_path / "run" / "hf_tokenizer"
    d.mkdir(parents=True)
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": EOS}))
    hf = build_tokenizer({"name": "hf", "path": str(d)}, specials=["[EOS]"])
    ids = hf.encode(TEXT)
    assert ids == tok.encode(TEXT).ids and hf.encode_array(TEXT).tolist() == ids
    assert hf.decode(ids) == tok.decode(ids) == TEXT
    assert hf.vocab_size == tok.get_vocab_size() == 300
    assert hf.special_ids == {"[EOS]": tok.token_to_id(EOS)}
    assert hf.encode(EOS) == [tok.token_to_id(EOS)]               # never split
    # the default path, relative to the run folder; a tokenizer.json file works as the path
    again = load_tokenizer("hf", tmp_path / "run")
    assert again.encode(TEXT) == ids and again.path == d
    assert HFTokenizer(d / "tokenizer.json").encode(TEXT) == ids


def test_slow_formats_are_built_with_tokenizers(tmp_path):
    tok = bpe()
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    tok.model.save(str(gpt2))                                      # vocab.json + merges.txt
    hf = HFTokenizer(gpt2)
    assert hf.encode(TEXT) == tok.encode(TEXT).ids and hf.decode(hf.encode(TEXT)) == TEXT

    bert = tmp_path / "bert"
    bert.mkdir()
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "to", "be", ",", "or", "not", "##t"]
    (bert / "vocab.txt").write_text("\n".join(words) + "\n")
    wp = HFTokenizer(bert, specials=["[MASK]"])
    assert wp.encode("To be, or nott") == [2, 5, 6, 7, 8, 9, 10, 3]       # [CLS] … [SEP]
    assert wp.encode_array("To be").tolist() == [5, 6]                   # corpora: no template
    assert wp.special_ids["[MASK]"] == 4 and wp.vocab_size == len(words)


def test_missing_files_are_one_line_errors(tmp_path, monkeypatch):
    d = tmp_path / "tok"
    d.mkdir()
    (d / "vocab.json").write_text('{"a": 0}')
    with pytest.raises(InputError) as e:
        HFTokenizer(d)
    assert "found: vocab.json" in str(e.value) and "merges.txt" in str(e.value)
    assert "\n" not in str(e.value)
    (d / "tokenizer.model").write_bytes(b"\0")                      # sentencepiece only
    monkeypatch.setitem(sys.modules, "transformers", None)          # as if not installed
    with pytest.raises(InputError, match="tokenizer.model is a sentencepiece model") as e:
        HFTokenizer(d)
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="no such Hugging Face tokenizer"):
        HFTokenizer(tmp_path / "nothing")


@pytest.mark.parametrize("backend", [True, False])
def test_sentencepiece_goes_through_transformers(tmp_path, monkeypatch, backend):
    """A sentencepiece-only directory is read by ``AutoTokenizer`` (stubbed here: no
    sentencepiece model is at hand), through its ``tokenizers`` backend or its own methods."""
    transformers = pytest.importorskip("transformers")
    tok = bpe()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS)

    class Slow:                             # a tokenizer without a ``tokenizers`` backend
        get_vocab, encode, decode = fast.get_vocab, fast.encode, fast.decode

    d = tmp_path / "sp"
    d.mkdir()
    (d / "tokenizer.model").write_bytes(b"\0")
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": EOS}))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        lambda *a, **k: fast if backend else Slow())
    hf = HFTokenizer(d)
    assert hf.encode(TEXT) == tok.encode(TEXT).ids == hf.encode_array(TEXT).tolist()
    assert hf.decode(hf.encode(TEXT)) == TEXT and hf.vocab_size == 300
    assert hf.special_ids == {"[EOS]": tok.token_to_id(EOS)}


# -- a converted run, end to end ---------------------------------------------------------------
def hf_dir(tmp_path, vocab_size=None, name="hf"):
    """A tiny random GPT-2 saved with its tokenizer (save_pretrained) in tmp_path/name."""
    transformers = pytest.importorskip("transformers")
    from tevo.interop.compare import randomize_
    tok = bpe()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS)
    model = randomize_(transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=vocab_size or tok.get_vocab_size(), n_layer=2, n_embd=32, n_head=2,
        n_positions=64, bos_token_id=None, eos_token_id=None)).eval())
    d = tmp_path / name
    fast.save_pretrained(d)
    model.save_pretrained(d)
    return d, fast, model


def test_converted_run_generates_what_transformers_generates(tmp_path, capsys):
    d, fast, hf = hf_dir(tmp_path)
    assert main(["convert", "--from-hf", str(d), "--out", str(tmp_path / "run"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["tokenizer"]
    assert out["vocab_size"] == 300 and out["specials"] == {"[EOS]": fast.eos_token_id}
    cfg = load_config(tmp_path / "run" / "config.yaml")
    assert cfg.data.tokenizer == {"name": "hf", "path": "hf_tokenizer"}
    # the run folder moves; its data: a small text corpus (instead of the default Shakespeare)
    run = tmp_path / "moved"
    shutil.move(tmp_path / "run", run)
    (tmp_path / "corpus.txt").write_text(TEXT * 40)
    save_config(load_config(run / "config.yaml", [f"data.corpus={tmp_path / 'corpus.txt'}"]),
                run / "config.yaml")

    enc = fast(PROMPT, return_tensors="pt")
    with torch.no_grad():
        ref = hf.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=0)
    n = enc["input_ids"].shape[1]
    assert main(["generate", str(run), "--prompt", PROMPT, "--max-new-tokens", "5",
                 "--greedy"]) == 0
    assert capsys.readouterr().out == PROMPT + fast.decode(ref[0, n:]) + "\n"

    from tevo.inference.generate import generate
    from tevo.train.run import load_run
    r = load_run(run)
    ids = torch.tensor([r.tokenizer.encode(PROMPT)])
    assert torch.equal(ids, enc["input_ids"])
    assert torch.equal(generate(r.model, ids, 5, greedy=True), ref)

    assert main(["eval", str(run), "--max-batches", "2", "--json"]) == 0
    assert torch.isfinite(torch.tensor(json.loads(capsys.readouterr().out)["loss"]))

    # a tokenizer that outgrows the model (files swapped after conversion)
    bpe(400).save(str(run / "hf_tokenizer" / "tokenizer.json"))
    assert main(["generate", str(run), "--prompt", PROMPT]) == 2
    m = re.search(r"the tokenizer has (\d+) tokens but the model only 300 ",
                  one_line_error(capsys))
    assert m and int(m.group(1)) > 300


def test_vocabulary_larger_than_the_model_is_a_one_line_error(tmp_path, capsys):
    d, _, _ = hf_dir(tmp_path, vocab_size=200)
    capsys.readouterr()
    assert main(["convert", "--from-hf", str(d), "--out", str(tmp_path / "run")]) == 2
    assert "the tokenizer has 300 tokens but the model only 200" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()
