"""Transformer-XL (transformers <= 4.37.2 only): import gives HF's log-probabilities over
consecutive segments, the later ones read the segment memory, and the memories themselves
agree; unsupported adaptive-softmax options are errors naming the option. Marked
``legacy_hf``: where the installed transformers has no TransfoXL, these run in the side
environment that CI builds (tests/test_interop_legacy.py)."""
import warnings

import pytest
import torch
from tiny import hf_transfo_xl


pytestmark = [pytest.mark.legacy_hf,
              pytest.mark.skipif(hf_transfo_xl() is None,
                                 reason="TransfoXL needs transformers <= 4.37.2")]

V, D, M, N, B = 53, 16, 8, 8, 2
TOL = 1e-5


def hf_model(**kw):
    import transformers
    from tevo.interop.compare import randomize_
    c = dict(vocab_size=V, cutoffs=[], d_model=D, d_embed=D, n_head=2, d_head=8, d_inner=32,
             div_val=1, n_layer=2, mem_len=M, clamp_len=0, same_length=False, untie_r=True,
             pre_lnorm=False, dropout=0.0, dropatt=0.0)
    c.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.TransfoXLLMHeadModel(transformers.TransfoXLConfig(**c))
    with torch.no_grad():
        return randomize_(hf, std=0.2).eval()


CASES = {
    "post-ln-untied-r": {},
    "pre-ln-shared-r-clamped": {"pre_lnorm": True, "untie_r": False, "clamp_len": 6},
    "same-length-projected-embeddings": {"same_length": True, "d_embed": 12, "n_layer": 3},
}


@pytest.mark.parametrize("case", list(CASES))
def test_segments_with_memory_match_hf(case):
    from tevo.interop.hf import from_hf
    hf = hf_model(**CASES[case])
    model = from_hf(hf)
    ids = torch.randint(0, V, (B, 3 * N))
    L, d = hf.config.n_layer, hf.config.d_model
    mems = [torch.zeros(0, B, d) for _ in range(L)]        # the reference code's empty memory
    memory = None
    with torch.no_grad():
        for s in range(0, 3 * N, N):                         # the 2nd and 3rd read the memory
            ref = hf(ids[:, s:s + N], mems=mems)
            out = model.forward_segment(ids[:, s:s + N], memory)
            got = torch.log_softmax(out.logits, -1)
            assert (got - ref.prediction_scores).abs().max() <= TOL, (case, s)
            mems, memory = ref.mems, out.state
            for i in range(L):                               # HF mems: (M, B, d)
                torch.testing.assert_close(memory["layers"][i], mems[i].transpose(0, 1),
                                           atol=TOL, rtol=0)


def test_hf_default_zero_memory_is_a_memory_of_zeros():
    """HF's ``mems=None`` attends to mem_len zero vectors at positions -M..-1."""
    from tevo.interop.hf import from_hf
    hf = hf_model()
    model = from_hf(hf)
    ids = torch.randint(0, V, (B, N))
    zeros = {"layers": [torch.zeros(B, M, D) for _ in range(hf.config.n_layer)],
             "positions": torch.arange(-M, 0).expand(B, M), "mask": None,
             "seen": torch.zeros(B, dtype=torch.long)}
    with torch.no_grad():
        ref = hf(ids).prediction_scores
        got = torch.log_softmax(model.forward_segment(ids, zeros).logits, -1)
    assert (got - ref).abs().max() <= TOL


@pytest.mark.parametrize("kw,option", [({"cutoffs": [20], "div_val": 1}, "cutoffs"),
                                       ({"div_val": 2}, "div_val")])
def test_adaptive_softmax_options_are_refused(kw, option):
    from tevo.interop.hf import UnsupportedHFOption, from_hf
    with pytest.raises(UnsupportedHFOption, match=f"option {option}="):
        from_hf(hf_model(**kw))
