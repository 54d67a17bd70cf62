"""What Language Model to Train if You Have One Million GPU Hours? (Le Scao et al., 2022): BLOOM
puts a LayerNorm right after the word embeddings."""
import torch

import tevo
from tevo.registry import NORMS, POSITIONS


def _bloom_like(**kw):
    pos = "alibi" if "alibi" in POSITIONS else "none"
    cfg = {"arch": "gpt", "vocab_size": 60, "d_model": 32, "n_layers": 2, "max_len": 32,
           "mixer": {"name": "softmax", "heads": 4}, "position": pos, "norm": "layernorm",
           "ffn": {"name": "mlp", "activation": "gelu_tanh"}, "residual": "pre_ln"}
    cfg.update(kw)
    return tevo.build_model(cfg).eval()


def test_embedding_norm_in_a_bloom_like_model():
    torch.manual_seed(0)
    model = _bloom_like(embedding_norm=True, tie_embeddings=False)
    ids = torch.randint(0, 60, (2, 10))
    # the norm the model applies equals the registered `embedding_norm` component
    en = NORMS.build("embedding_norm", d_model=32)
    with torch.no_grad():
        model.emb_norm.weight.uniform_(0.5, 1.5)
        model.emb_norm.bias.normal_()
        model.embed.weight.normal_()           # unit-scale embeddings: ε is negligible below
    en.load_state_dict(model.emb_norm.state_dict())
    seen = {}
    h = model.blocks.blocks[0].register_forward_pre_hook(lambda m, a: seen.update(x=a[0]))
    ref_logits = model(ids).logits
    h.remove()
    e = model.embed(ids)
    torch.testing.assert_close(seen["x"], en(e))
    mu, var = e.mean(-1, keepdim=True), e.var(-1, unbiased=False, keepdim=True)
    torch.testing.assert_close(seen["x"], (e - mu) / torch.sqrt(var + 1e-5) * en.weight + en.bias)
    # defining property: the network no longer depends on the scale of the embedding table
    with torch.no_grad():
        model.embed.weight.mul_(50.0)
    torch.testing.assert_close(model(ids).logits, ref_logits, atol=1e-4, rtol=1e-4)
    plain = _bloom_like(embedding_norm=False, tie_embeddings=False)
    with torch.no_grad():
        plain.embed.weight.normal_()
    before = plain(ids).logits
    with torch.no_grad():
        plain.embed.weight.mul_(50.0)
    assert (plain(ids).logits - before).abs().max() > 1e-3           # without it, it does
