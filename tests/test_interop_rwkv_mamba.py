"""RWKV-4 (``RwkvForCausalLM``) and Mamba (``MambaForCausalLM``) imported from transformers with
random weights: the same logits (fp32, ≤ 1e-4; Mamba with a left-padded batch as transformers
masks it) and the same 20 greedy tokens as HF ``generate``, through ``tevo convert`` too."""
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tevo.cli import main  # noqa: E402
from tevo.interop.commands import load_run  # noqa: E402
from tevo.interop.compare import (check_equivalence, greedy_tevo, random_batch,  # noqa: E402
                                  randomize_)
from tevo.interop.hf import UnsupportedHFOption, from_hf  # noqa: E402

TOL = 1e-4
V = 101
NONE = dict(bos_token_id=None, eos_token_id=None)


def rwkv(**kw):
    c = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
             context_length=64, **NONE)
    c.update(kw)
    return randomize_(transformers.RwkvForCausalLM(transformers.RwkvConfig(**c)).eval())


def mamba(**kw):
    c = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, state_size=8, conv_kernel=4,
             expand=2, pad_token_id=0, **NONE)
    c.update(kw)
    return randomize_(transformers.MambaForCausalLM(transformers.MambaConfig(**c)).eval())


CASES = {
    "rwkv": lambda: rwkv(),
    "rwkv-wide-attention-3-layers": lambda: rwkv(attention_hidden_size=48, num_hidden_layers=3,
                                                 intermediate_size=None, rescale_every=0,
                                                 use_cache=False),   # HF: state sized d
    "mamba-tied": lambda: mamba(),
    "mamba-untied-rank-3-conv-3": lambda: mamba(tie_word_embeddings=False, time_step_rank=3,
                                                conv_kernel=3, state_size=4),
}


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match(case):
    """Mamba: a left-padded batch (rows with 0, 3, 5 padding tokens); RWKV: transformers ignores
    the mask, so the batch is unpadded (check_equivalence knows this)."""
    hf = CASES[case]()
    model = from_hf(hf)                                  # before HF's eval-mode rescaling
    r = check_equivalence(hf, model, batch=3, n=12)
    assert r["max_abs_diff"] <= TOL, r


def test_rwkv_greedy_tokens_equal_hf_generate():
    """transformers 5.x broadcasts RWKV's one-token state across the batch when B > 1, so its
    generate is run one prompt at a time."""
    hf = rwkv()
    model = from_hf(hf)
    ids, _ = random_batch(V, batch=2, n=8, seed=4)
    ours = greedy_tevo(model, ids, torch.ones_like(ids), 20)
    for b in range(2):
        ref = hf.generate(ids[b:b + 1], max_new_tokens=20, do_sample=False)[:, 8:]
        assert torch.equal(ours[b:b + 1], ref)


def test_rwkv_rescaled_layers_convert_to_the_unscaled_function():
    """transformers divides the output weights in place when an RWKV model with rescale_every
    first runs in eval mode; the import multiplies them back: tevo = HF's training-mode
    (unscaled) function, which is the checkpoint's."""
    hf = rwkv(num_hidden_layers=3, rescale_every=1)
    ids, _ = random_batch(V, batch=2, n=12)
    with torch.no_grad():
        hf(ids, use_cache=False)
        assert hf.rwkv.layers_are_rescaled
        model = from_hf(hf)
        hf.train()                                       # transformers undoes the rescaling
        ref = hf(ids, use_cache=False).logits
        assert (model(ids).logits - ref).abs().max() <= TOL


def test_mamba_greedy_tokens_equal_hf_generate_with_left_padding():
    hf = mamba()
    model = from_hf(hf)
    ids, mask = random_batch(V, batch=3, n=8, seed=4, pad_id=0)
    ref = hf.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False)[:, 8:]
    assert torch.equal(greedy_tevo(model, ids, mask, 20), ref)


def test_mamba_beam_search_equals_hf_generate_num_beams():
    """The fixed-size state (conv window, SSM state) is reordered with the beams."""
    from tevo.inference.beam import beam_search
    hf = mamba()
    model = from_hf(hf)
    ids, _ = random_batch(V, batch=1, n=8, seed=5)
    ours = beam_search(model, ids, num_beams=3, max_new_tokens=10).sequences
    ref = hf.generate(ids, num_beams=3, max_new_tokens=10, do_sample=False,
                      early_stopping=False)
    assert torch.equal(ours, ref)


def test_mamba_with_in_proj_bias_keeps_padding_out():
    """With use_bias=True transformers' padded rows see in_proj's bias at padding positions
    (it masks before in_proj); tevo's padded rows equal the unpadded ones, which equal HF's."""
    hf = mamba(use_bias=True)
    model = from_hf(hf)
    ids, mask = random_batch(V, batch=3, n=12, seed=2)
    with torch.no_grad():
        padded = model(ids, attention_mask=mask).logits
        for b in range(1, 3):
            real = ids[b:b + 1, ~mask[b].bool()].numel()
            solo_hf = hf(ids[b:b + 1, real:]).logits
            torch.testing.assert_close(padded[b:b + 1, real:], solo_hf, atol=TOL, rtol=0)


@pytest.mark.parametrize("make,option", [
    (lambda: rwkv(layer_norm_epsilon=1e-6), "layer_norm_epsilon"),
    (lambda: mamba(hidden_act="gelu"), "hidden_act"),
])
def test_unsupported_option_is_named(make, option):
    with pytest.raises(UnsupportedHFOption, match=option):
        from_hf(make())


@pytest.mark.parametrize("make", [rwkv, mamba], ids=["rwkv", "mamba"])
def test_convert_cli_checks_through_a_run_directory(make, tmp_path, capsys):
    hf = make()
    hf.save_pretrained(tmp_path / "hf")
    rc = main(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run"),
               "--check", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["check"]["max_abs_diff"] <= TOL, out
    assert check_equivalence(hf, load_run(tmp_path / "run"))["max_abs_diff"] <= TOL


@pytest.mark.parametrize("preset,make", [("rwkv4", rwkv), ("mamba", mamba)])
def test_presets_are_the_converted_architecture(preset, make):
    """The shipped presets build what the HF import builds (same blocks, norms, positions,
    head tying); only the sizes differ."""
    from tevo.config import model_config
    conv = from_hf(make()).cfg
    ref = model_config(preset)
    for key in ("arch", "layout", "residual", "position", "embedding_norm", "tie_embeddings"):
        assert getattr(ref, key) == getattr(conv, key), key
    for key in ("mixer", "norm"):
        a, b = getattr(ref, key), getattr(conv, key)
        assert (a["name"] if isinstance(a, dict) else a) == (b["name"] if isinstance(b, dict)
                                                              else b), key
    if "f" in ref.layout.split():
        assert ref.ffn["name"] == conv.ffn["name"]
