"""BERT, RoBERTa (XLM-R, CamemBERT), ELECTRA and DistilBERT ⇄ tevo ``bert``.

All are post-LN encoders with learned positions, segment embeddings (except DistilBERT), an
embedding LayerNorm and an MLM head ``decoder(LN(act(dense(h)))) + bias`` whose decoder is tied
to the word embeddings and has its own output bias.

RoBERTa numbers positions from ``padding_idx + 1`` (fairseq's ``make_positions``): position
row ``padding_idx + 1 + t`` holds the t-th non-padding token (counted from the ids, so left
padding shifts nothing), the rows up to ``padding_idx`` only ever serve padding. tevo's table
is that table sliced from ``padding_idx + 1``, so tevo's position t is RoBERTa's
``padding_idx + 1 + t``, and the converted model sets ``extra.positions_skip_padding`` so that
its encoder counts positions the same way. RoBERTa's MLM head (``RobertaLMHead``) always
applies exact GELU, whatever ``hidden_act`` says.

ELECTRA's discriminator head (dense → act → one logit per token) is not part of tevo's
``Encoder``; the converted model is ``ModelWithHead(encoder, ReplacedTokenDetectionHead)``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..config import ModelConfig
from .heads import ModelWithHead, ReplacedTokenDetectionHead
from .hf import (ConversionError, HFFamily, Weights, activation, block_key, hf_tokens, linear,
                 register, require)

# tevo Encoder weights a checkpoint without the pre-training heads (BertModel,
# BertForMaskedLM without NSP, ELECTRA) does not give; they keep their initial values.
ENCODER_HEADS = (r"mlm_transform\..*", r"head\.(weight|bias)", r"pooler\..*", r"nsp\..*")

# ``mlm_head``'s names for BERT's ``cls.predictions`` head (BERT, RoFormer, FNet)
CLS_MLM = ("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm",
           "cls.predictions.decoder", "cls.predictions.bias", "embeddings.word_embeddings.weight")


def bert_layer(w: Weights, hf: str, i: int, sd: dict) -> None:
    """``encoder.layer.i`` of BERT/RoBERTa/ELECTRA → tevo block i (post-LN, layout "a f")."""
    t = block_key(i)
    for a, b in (("attention.self.query", "q_proj"), ("attention.self.key", "k_proj"),
                 ("attention.self.value", "v_proj"), ("attention.output.dense", "o_proj")):
        linear(w, f"{hf}{a}", f"{t}sublayers.0.{b}", sd)
    linear(w, f"{hf}intermediate.dense", f"{t}sublayers.1.fc1", sd)
    linear(w, f"{hf}output.dense", f"{t}sublayers.1.fc2", sd)
    linear(w, f"{hf}attention.output.LayerNorm", f"{t}residuals.0.norm", sd)
    linear(w, f"{hf}output.LayerNorm", f"{t}residuals.1.norm", sd)


def mlm_head(c, w: Weights, sd: dict, dense: str, norm: str, decoder: str, bias: str,
             embed_key: str) -> None:
    """MLM transform + tied decoder + output bias, when the checkpoint has them."""
    if f"{dense}.weight" not in w:
        return
    linear(w, dense, "mlm_transform.0", sd)
    linear(w, norm, "mlm_transform.2", sd)
    # the decoder's bias is what the forward pass adds; the separate ``bias`` parameter is
    # its tied twin (older checkpoints store only that one; untied ones leave it unused)
    b, dec_b = w.get(bias), w.get(f"{decoder}.bias")
    b = dec_b if dec_b is not None else b
    if b is not None:
        sd["head.bias"] = b
    dec = w.get(f"{decoder}.weight")
    if getattr(c, "tie_word_embeddings", True):
        if dec is not None and not torch.equal(dec, w.sd[embed_key]):
            raise ConversionError(f"{c.model_type}: tie_word_embeddings=True but "
                                  f"{decoder}.weight differs from the word embeddings")
    elif dec is not None:
        sd["head.weight"] = dec


def pretraining_heads(c, w: Weights, sd: dict) -> None:
    """BERT's pre-training heads, each when the checkpoint has it: the ``cls.predictions`` MLM
    head, the pooler and the next-sentence (``cls.seq_relationship``) head."""
    mlm_head(c, w, sd, *CLS_MLM)
    if "pooler.dense.weight" in w:
        linear(w, "pooler.dense", "pooler", sd)
    if "cls.seq_relationship.weight" in w:
        linear(w, "cls.seq_relationship", "nsp", sd)


def _check_encoder(c) -> None:
    require(c, "is_decoder", False, default=False)
    require(c, "add_cross_attention", False, default=False)
    require(c, "position_embedding_type", "absolute", default="absolute")
    emb = getattr(c, "embedding_size", None)
    if emb is not None and emb != c.hidden_size:
        require(c, "embedding_size", c.hidden_size,
                why="a factorised embedding (embeddings_project) has no tevo counterpart")


def encoder_config(c, max_len: int, n_segments: int, act: str, eps: float, extra=None) -> dict:
    return {
        "arch": "bert", "vocab_size": c.vocab_size, "d_model": c.hidden_size,
        "n_layers": c.num_hidden_layers, "max_len": max_len,
        "mixer": {"name": "softmax", "heads": c.num_attention_heads, "bias": True},
        "ffn": {"name": "mlp", "d_ff": c.intermediate_size, "activation": act},
        "norm": {"name": "layernorm", "eps": float(eps)}, "residual": "post_ln",
        "position": {"name": "learned", "max_len": max_len}, "embedding_norm": True,
        "n_segments": n_segments, "dropout": float(getattr(c, "hidden_dropout_prob", 0.0)),
        "tie_embeddings": bool(getattr(c, "tie_word_embeddings", True)),
        "pad_id": getattr(c, "pad_token_id", None),
        "extra": {"mlm_activation": act,
                  "hf": {"model_type": c.model_type, **hf_tokens(c), **(extra or {})}},
    }


def bert_config(c) -> dict:
    """``encoder_config`` of a BERT-shaped HF config with absolute positions (BERT, ELECTRA)."""
    _check_encoder(c)
    act = activation(c.model_type, "hidden_act", c.hidden_act)
    return encoder_config(c, c.max_position_embeddings, c.type_vocab_size, act, c.layer_norm_eps)


def embeddings(w: Weights, sd: dict, pos_rows: slice = slice(None)) -> None:
    sd["embed.weight"] = w.take("embeddings.word_embeddings.weight")
    sd["pos.table.weight"] = w.take("embeddings.position_embeddings.weight")[pos_rows]
    if "embeddings.token_type_embeddings.weight" in w:
        sd["segment.weight"] = w.take("embeddings.token_type_embeddings.weight")
    linear(w, "embeddings.LayerNorm", "emb_norm", sd)
    w.drop(r"embeddings\.(position_ids|token_type_ids)")


def encoder_weights(c, w: Weights, pos_rows: slice = slice(None)) -> dict[str, Tensor]:
    """The embeddings and the ``encoder.layer.*`` blocks of a BERT-shaped checkpoint."""
    sd: dict[str, Tensor] = {}
    embeddings(w, sd, pos_rows)
    for i in range(c.num_hidden_layers):
        bert_layer(w, f"encoder.layer.{i}.", i, sd)
    return sd


@register
class BERT(HFFamily):
    model_types = ("bert",)
    prefixes = ("bert.",)
    optional = ENCODER_HEADS

    def config(self, c) -> dict:
        return bert_config(c)

    def weights(self, c, w: Weights, cfg: ModelConfig) -> dict[str, Tensor]:
        sd = encoder_weights(c, w)
        pretraining_heads(c, w, sd)
        return sd


@register
class RoBERTa(HFFamily):
    model_types = ("roberta", "xlm-roberta", "camembert")
    prefixes = ("roberta.",)
    optional = ENCODER_HEADS

    def config(self, c) -> dict:
        _check_encoder(c)
        act = activation(c.model_type, "hidden_act", c.hidden_act)
        pad = int(c.pad_token_id)
        n_pos = c.max_position_embeddings - pad - 1            # rows padding_idx+1 ... end
        if n_pos < 1:
            raise ConversionError(f"{c.model_type}: max_position_embeddings="
                                  f"{c.max_position_embeddings} leaves no position after "
                                  f"padding_idx={pad}")
        data = encoder_config(c, n_pos, c.type_vocab_size, act, c.layer_norm_eps,
                              {"position_offset": pad + 1})
        # RobertaLMHead applies exact GELU whatever hidden_act says
        data["extra"]["mlm_activation"] = "gelu"
        # positions count the non-padding ids (create_position_ids_from_input_ids)
        data["extra"]["positions_skip_padding"] = True
        return data

    def weights(self, c, w: Weights, cfg: ModelConfig) -> dict[str, Tensor]:
        sd = encoder_weights(c, w, slice(int(c.pad_token_id) + 1, None))
        mlm_head(c, w, sd, "lm_head.dense", "lm_head.layer_norm", "lm_head.decoder",
                 "lm_head.bias", "embeddings.word_embeddings.weight")
        if "pooler.dense.weight" in w:
            linear(w, "pooler.dense", "pooler", sd)
        return sd


@register
class ELECTRA(HFFamily):
    """ELECTRA discriminator (ElectraForPreTraining): encoder + replaced-token head."""

    model_types = ("electra",)
    prefixes = ("electra.",)
    optional = ENCODER_HEADS

    def config(self, c) -> dict:
        return bert_config(c)

    def weights(self, c, w: Weights, cfg: ModelConfig) -> dict[str, Tensor]:
        sd = encoder_weights(c, w)
        return sd

    def wrap(self, c, model, w: Weights):
        if "discriminator_predictions.dense.weight" not in w:
            return model
        act = activation(c.model_type, "hidden_act", c.hidden_act)
        h = ReplacedTokenDetectionHead(c.hidden_size, act)
        h.load_state_dict({k: w.take(f"discriminator_predictions.{k}")
                           for k in h.state_dict()})
        return ModelWithHead(model, h)


@register
class DistilBERT(HFFamily):
    model_types = ("distilbert",)
    prefixes = ("distilbert.",)
    optional = ENCODER_HEADS

    def config(self, c) -> dict:
        act = activation(c.model_type, "activation", c.activation)
        data = {
            "arch": "bert", "vocab_size": c.vocab_size, "d_model": c.dim, "n_layers": c.n_layers,
            "max_len": c.max_position_embeddings,
            "mixer": {"name": "softmax", "heads": c.n_heads, "bias": True},
            "ffn": {"name": "mlp", "d_ff": c.hidden_dim, "activation": act},
            "norm": {"name": "layernorm", "eps": 1e-12}, "residual": "post_ln",
            "position": {"name": "learned", "max_len": c.max_position_embeddings},
            "embedding_norm": True, "n_segments": 0, "dropout": float(c.dropout),
            "tie_embeddings": bool(getattr(c, "tie_word_embeddings", True)),
            "pad_id": c.pad_token_id,
            "extra": {"mlm_activation": act, "hf": {"model_type": c.model_type, **hf_tokens(c)}},
        }
        return data

    def weights(self, c, w: Weights, cfg: ModelConfig) -> dict[str, Tensor]:
        sd: dict[str, Tensor] = {
            "embed.weight": w.take("embeddings.word_embeddings.weight"),
            "pos.table.weight": w.take("embeddings.position_embeddings.weight")}
        linear(w, "embeddings.LayerNorm", "emb_norm", sd)
        w.drop(r"embeddings\.position_ids")
        for i in range(c.n_layers):
            hf, t = f"transformer.layer.{i}.", block_key(i)
            for a, b in (("q_lin", "q_proj"), ("k_lin", "k_proj"), ("v_lin", "v_proj"),
                         ("out_lin", "o_proj")):
                linear(w, f"{hf}attention.{a}", f"{t}sublayers.0.{b}", sd)
            linear(w, f"{hf}ffn.lin1", f"{t}sublayers.1.fc1", sd)
            linear(w, f"{hf}ffn.lin2", f"{t}sublayers.1.fc2", sd)
            linear(w, f"{hf}sa_layer_norm", f"{t}residuals.0.norm", sd)
            linear(w, f"{hf}output_layer_norm", f"{t}residuals.1.norm", sd)
        mlm_head(c, w, sd, "vocab_transform", "vocab_layer_norm", "vocab_projector",
                 "vocab_projector.bias", "embeddings.word_embeddings.weight")
        return sd


@register
class RoFormer(HFFamily):
    """RoFormer (Su et al., 2021): BERT with rotary positions in the interleaved layout (pairs
    (x_2i, x_2i+1)), θ_i = 10000^{-2i/e}, and no absolute position table."""

    model_types = ("roformer",)
    prefixes = ("roformer.",)
    optional = ENCODER_HEADS

    def config(self, c) -> dict:
        _check_encoder(c)
        require(c, "rotary_value", False, default=False)
        act = activation(c.model_type, "hidden_act", c.hidden_act)
        data = encoder_config(c, c.max_position_embeddings, c.type_vocab_size, act,
                              c.layer_norm_eps)
        data["position"] = {"name": "rope", "layout": "interleaved", "base": 10000.0}
        return data

    def weights(self, c, w: Weights, cfg: ModelConfig) -> dict[str, Tensor]:
        sd: dict[str, Tensor] = {"embed.weight": w.take("embeddings.word_embeddings.weight")}
        if "embeddings.token_type_embeddings.weight" in w:
            sd["segment.weight"] = w.take("embeddings.token_type_embeddings.weight")
        linear(w, "embeddings.LayerNorm", "emb_norm", sd)
        w.drop(r"embeddings\.(position_ids|token_type_ids)")
        table = w.get("encoder.embed_positions.weight")       # fixed sinusoids: check them
        if table is not None:
            _check_roformer_table(c, table)
        for i in range(c.num_hidden_layers):
            bert_layer(w, f"encoder.layer.{i}.", i, sd)
        mlm_head(c, w, sd, *CLS_MLM)
        return sd


def _check_roformer_table(c, table: Tensor) -> None:
    """RoFormer stores its sinusoid table [sin | cos] (n, e); tevo recomputes it, so the stored
    one must be the standard table (a trained or edited table would be silently lost)."""
    n, e = table.shape
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    inv = 1.0 / 10000 ** (torch.arange(0, e, 2, dtype=torch.float64) / e)
    ref = torch.cat([(pos * inv).sin(), (pos * inv).cos()], 1).to(table.dtype)
    if not torch.allclose(table, ref, atol=1e-4):
        raise ConversionError(f"{c.model_type}: encoder.embed_positions differs from the "
                              f"standard sinusoid table that tevo's rope computes")


@register
class FNet(HFFamily):
    """FNet (Lee-Thorp et al., 2021): post-LN blocks whose token mixer is Re(FFT2(x)); the
    embeddings are normalised then projected by a dense layer. FNet takes no attention mask:
    padding tokens are mixed like any other (the paper packs inputs to a fixed length)."""

    model_types = ("fnet",)
    prefixes = ("fnet.",)
    optional = ENCODER_HEADS

    def config(self, c) -> dict:
        require(c, "use_tpu_fourier_optimizations", False, default=False,
                why="the TPU path computes the DFT by matrix products (a different rounding)")
        act = activation(c.model_type, "hidden_act", c.hidden_act)
        data = {
            "arch": "bert", "vocab_size": c.vocab_size, "d_model": c.hidden_size,
            "n_layers": c.num_hidden_layers, "max_len": c.max_position_embeddings,
            "mixer": "fnet", "ffn": {"name": "mlp", "d_ff": c.intermediate_size, "activation": act},
            "norm": {"name": "layernorm", "eps": float(c.layer_norm_eps)}, "residual": "post_ln",
            "position": {"name": "learned", "max_len": c.max_position_embeddings},
            "embedding_norm": True, "n_segments": c.type_vocab_size,
            "dropout": float(c.hidden_dropout_prob),
            "tie_embeddings": bool(getattr(c, "tie_word_embeddings", True)),
            "pad_id": c.pad_token_id,
            "extra": {"mlm_activation": act, "embedding_projection": True,
                      "hf": {"model_type": c.model_type, **hf_tokens(c)}},
        }
        return data

    def weights(self, c, w: Weights, cfg: ModelConfig) -> dict[str, Tensor]:
        sd: dict[str, Tensor] = {}
        embeddings(w, sd)
        linear(w, "embeddings.projection", "emb_proj", sd)
        for i in range(c.num_hidden_layers):
            hf, t = f"encoder.layer.{i}.", block_key(i)
            linear(w, f"{hf}fourier.output.LayerNorm", f"{t}residuals.0.norm", sd)
            linear(w, f"{hf}intermediate.dense", f"{t}sublayers.1.fc1", sd)
            linear(w, f"{hf}output.dense", f"{t}sublayers.1.fc2", sd)
            linear(w, f"{hf}output.LayerNorm", f"{t}residuals.1.norm", sd)
        pretraining_heads(c, w, sd)
        return sd
