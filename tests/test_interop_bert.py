"""BERT (MLM + NSP), RoBERTa, XLM-R, ELECTRA discriminator and DistilBERT: the converted tevo
encoder gives the same logits on a right-padded batch."""
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tevo.interop.compare import check_equivalence, random_batch, randomize_  # noqa: E402
from tevo.interop.hf import ConversionError, UnsupportedHFOption, from_hf  # noqa: E402

TOL = 1e-5
V = 101
BERTLIKE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                vocab_size=V, max_position_embeddings=40, initializer_range=0.1,
                attn_implementation="eager")


def make(cls_name, cfg_name, **kw):
    cfg = getattr(transformers, cfg_name)(**{**BERTLIKE, **kw})
    return randomize_(getattr(transformers, cls_name)(cfg).eval())


CASES = {
    "bert-pretraining": lambda: make("BertForPreTraining", "BertConfig"),
    "bert-mlm-relu-untied": lambda: make("BertForMaskedLM", "BertConfig", hidden_act="relu",
                                         tie_word_embeddings=False, type_vocab_size=3),
    "roberta": lambda: make("RobertaForMaskedLM", "RobertaConfig"),
    "xlm-roberta": lambda: make("XLMRobertaForMaskedLM", "XLMRobertaConfig", pad_token_id=3),
    "electra-discriminator": lambda: make("ElectraForPreTraining", "ElectraConfig",
                                          embedding_size=32),
    "distilbert": lambda: randomize_(transformers.DistilBertForMaskedLM(
        transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, vocab_size=V,
                                      max_position_embeddings=40,
                                      attn_implementation="eager")).eval()),
    "roformer": lambda: make("RoFormerForMaskedLM", "RoFormerConfig"),
    "fnet-pretraining": lambda: randomize_(transformers.FNetForPreTraining(transformers.FNetConfig(
        hidden_size=32, num_hidden_layers=2, intermediate_size=64, vocab_size=V,
        max_position_embeddings=40)).eval()),
}


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_with_padding(case):
    hf = CASES[case]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                 # heads the checkpoint does not have
        model = from_hf(hf)
    r = check_equivalence(hf, model, batch=3, n=16)
    assert r["max_abs_diff"] <= TOL, r


def test_bert_nsp_pooler_and_segments_match():
    hf = CASES["bert-pretraining"]()
    model = from_hf(hf)
    ids, mask = random_batch(V, 3, 10, left=False, pad_id=0)
    seg = torch.zeros_like(ids)
    seg[:, 5:] = 1
    with torch.no_grad():
        a = hf(input_ids=ids, attention_mask=mask, token_type_ids=seg)
        b = model(ids, attention_mask=mask, token_type_ids=seg)
    m = mask.bool()
    assert (a.prediction_logits - b.logits)[m].abs().max() <= TOL
    assert (a.seq_relationship_logits - b.extra["nsp_logits"]).abs().max() <= TOL


def test_bert_mlm_decoder_is_tied_and_bias_kept():
    hf = CASES["bert-pretraining"]()
    model = from_hf(hf)
    assert model.head.weight is model.embed.weight
    assert torch.equal(model.head.bias, hf.cls.predictions.bias)


def test_roberta_positions_are_the_table_after_padding_idx():
    hf = CASES["xlm-roberta"]()
    model = from_hf(hf, warn=False)
    pad = hf.config.pad_token_id
    table = hf.roberta.embeddings.position_embeddings.weight
    assert torch.equal(model.pos.table.weight, table[pad + 1:])


def test_bare_encoder_warns_about_missing_heads():
    hf = make("BertModel", "BertConfig")
    with pytest.warns(UserWarning, match="mlm_transform"):
        from_hf(hf)


@pytest.mark.parametrize("cls,kw,option", [
    ("BertConfig", {"is_decoder": True}, "is_decoder"),
    ("BertConfig", {"hidden_act": "gelu_10"}, "hidden_act"),
    ("ElectraConfig", {"embedding_size": 16}, "embedding_size"),
    ("RoFormerConfig", {"rotary_value": True}, "rotary_value"),
])
def test_unsupported_option_is_named(cls, kw, option):
    model_cls = {"BertConfig": "BertForMaskedLM", "ElectraConfig": "ElectraForPreTraining",
                 "RoFormerConfig": "RoFormerForMaskedLM"}[cls]
    hf = make(model_cls, cls, **kw)
    with pytest.raises(UnsupportedHFOption, match=option):
        from_hf(hf)


def test_classifier_head_is_not_dropped_silently():
    hf = make("BertForSequenceClassification", "BertConfig", num_labels=3)
    with pytest.raises(ConversionError, match="classifier"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from_hf(hf)


def test_fnet_nsp_and_projection():
    hf = CASES["fnet-pretraining"]()
    model = from_hf(hf)
    ids, _ = random_batch(V, 2, 10, left=False)
    with torch.no_grad():
        a = hf(input_ids=ids)
        b = model(ids)
    assert (a.prediction_logits - b.logits).abs().max() <= TOL
    assert (a.seq_relationship_logits - b.extra["nsp_logits"]).abs().max() <= TOL


def test_roformer_edited_sinusoid_table_is_refused():
    hf = CASES["roformer"]()
    with torch.no_grad():
        hf.roformer.encoder.embed_positions.weight[3, 1] += 1.0
    with pytest.raises(ConversionError, match="embed_positions"):
        from_hf(hf, warn=False)


@pytest.mark.parametrize("cls,cfg_name,act", [
    ("RobertaForMaskedLM", "RobertaConfig", "relu"),
    ("XLMRobertaForMaskedLM", "XLMRobertaConfig", "gelu_new"),
    ("CamembertForMaskedLM", "CamembertConfig", "gelu")])
@pytest.mark.parametrize("left", [False, True], ids=["right-pad", "left-pad"])
def test_roberta_family_mlm_head_gelu_and_positions_from_padding(cls, cfg_name, act, left):
    """RobertaLMHead uses exact GELU whatever hidden_act is (a relu head was off by 0.35), and
    positions count the non-padding ids, so left padding matches HF too (was off by 1.5)."""
    hf = make(cls, cfg_name, hidden_act=act, pad_token_id=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = from_hf(hf).eval()
    ids, mask = random_batch(V, 3, 12, left=left, pad_id=2)
    with torch.no_grad():
        a = hf(input_ids=ids, attention_mask=mask).logits
        b = model(ids, attention_mask=mask.bool()).logits
    real = mask.bool()
    torch.testing.assert_close(b[real], a[real], atol=TOL, rtol=0)
