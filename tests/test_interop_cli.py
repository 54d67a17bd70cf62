"""``tevo convert``: HF directory → tevo run directory → HF directory, with ``--check``."""
import json
import warnings

import pytest

transformers = pytest.importorskip("transformers")

from tevo.cli import main  # noqa: E402
from tevo.interop.commands import load_run  # noqa: E402
from tevo.interop.compare import check_equivalence, randomize_  # noqa: E402
from tevo.interop.heads import ModelWithHead  # noqa: E402

TOL = 1e-5
V = 101


def convert(capsys, *args) -> tuple[int, dict | str]:
    rc = main(["convert", *map(str, args), "--json"])
    out = capsys.readouterr()
    try:
        return rc, json.loads(out.out)
    except json.JSONDecodeError:
        return rc, out.out + out.err


def test_gpt2_roundtrip_through_a_run_directory(tmp_path, capsys):
    hf = randomize_(transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=V, n_positions=64,
        bos_token_id=None, eos_token_id=None)).eval())
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "vocab.json").write_text('{"a": 0}')      # a tokenizer file
    rc, out = convert(capsys, "--from-hf", tmp_path / "hf", "--out", tmp_path / "run", "--check")
    assert rc == 0 and out["check"]["max_abs_diff"] <= TOL, out
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert (tmp_path / "run" / "hf_tokenizer" / "vocab.json").is_file()
    assert (tmp_path / "run" / "checkpoints" / "step_00000000" / "model.safetensors").is_file()
    hf.config._attn_implementation = "eager"
    assert check_equivalence(hf, load_run(tmp_path / "run"))["max_abs_diff"] <= TOL

    rc, out = convert(capsys, "--to-hf", tmp_path / "run", "--out", tmp_path / "back", "--check")
    assert rc == 0 and out["check"]["max_abs_diff"] <= TOL, out
    assert (tmp_path / "back" / "vocab.json").is_file()
    back = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "back", attn_implementation="eager").eval()
    assert check_equivalence(back, load_run(tmp_path / "run"))["max_abs_diff"] <= TOL


def test_electra_discriminator_head_survives_the_run_directory(tmp_path, capsys):
    hf = randomize_(transformers.ElectraForPreTraining(transformers.ElectraConfig(
        embedding_size=32, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=64, vocab_size=V, max_position_embeddings=40)).eval())
    hf.save_pretrained(tmp_path / "hf")
    rc, out = convert(capsys, "--from-hf", tmp_path / "hf", "--out", tmp_path / "run", "--check")
    assert rc == 0 and out["check"]["max_abs_diff"] <= TOL, out
    assert "nsp.weight" in out["missing"]
    model = load_run(tmp_path / "run")
    assert isinstance(model, ModelWithHead)
    hf.config._attn_implementation = "eager"
    assert check_equivalence(hf, model)["max_abs_diff"] <= TOL


def test_t5_from_a_directory(tmp_path, capsys):
    hf = randomize_(transformers.T5ForConditionalGeneration(transformers.T5Config(
        d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4, vocab_size=V,
        relative_attention_num_buckets=8, relative_attention_max_distance=12)).eval())
    hf.save_pretrained(tmp_path / "hf")
    rc, out = convert(capsys, "--from-hf", tmp_path / "hf", "--out", tmp_path / "run", "--check")
    assert rc == 0 and out["check"]["max_abs_diff"] <= TOL, out


def test_export_of_an_unexportable_model_is_a_clear_error(tmp_path, capsys):
    hf = randomize_(transformers.BertForMaskedLM(transformers.BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        vocab_size=V, max_position_embeddings=40)).eval())
    hf.save_pretrained(tmp_path / "hf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc, _ = convert(capsys, "--from-hf", tmp_path / "hf", "--out", tmp_path / "run")
    assert rc == 0
    rc, out = convert(capsys, "--to-hf", tmp_path / "run", "--out", tmp_path / "back")
    assert rc == 2 and "no Hugging Face architecture" in out


def test_missing_directory_is_a_clear_error(tmp_path, capsys):
    rc, out = convert(capsys, "--from-hf", tmp_path / "nothing", "--out", tmp_path / "run")
    assert rc == 2 and "config.json" in out


def _known_to_transformers_only() -> str:
    from tevo.interop.hf import supported_model_types
    return next(t for t in ("whisper", "wav2vec2", "speecht5", "clap", "musicgen")
                if t not in supported_model_types())


@pytest.mark.parametrize("model_type", ["no_such_model", "transformers-only"])
def test_unregistered_model_type_is_one_line(tmp_path, capsys, model_type):
    """A config.json whose model_type transformers does not know (or tevo has no family for) is
    refused in one line naming it, before any weights are read — not a traceback."""
    if model_type == "transformers-only":
        model_type = _known_to_transformers_only()
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": model_type}))
    rc, out = convert(capsys, "--from-hf", tmp_path / "hf", "--out", tmp_path / "run")
    assert rc == 2 and "Traceback" not in out
    assert out.strip().count("\n") == 0 and f"model_type {model_type!r}" in out
