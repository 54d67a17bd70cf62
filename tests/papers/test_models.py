"""Model-level paper properties: GPT-2 decode, BERT heads, the vanilla Transformer."""
import torch

import tevo
from tiny import cached_logits


def test_gpt2_preset_cached_decode_equals_full_pass():
    torch.manual_seed(0)
    model = tevo.build_model("gpt2", n_layers=2, d_model=64, vocab_size=300, max_len=64,
                             dropout=0.0, mixer={"name": "softmax", "heads": 4}).eval()
    ids = torch.randint(0, 300, (2, 20))
    full = model(ids).logits
    cached = cached_logits(model, ids)
    diff = (cached - full).abs().max().item()
    assert diff < 1e-5, diff


def test_bert_mlm_head_is_tied_and_padding_invariant():
    torch.manual_seed(0)
    model = tevo.build_model("bert", n_layers=2, d_model=32, vocab_size=50, max_len=32,
                             dropout=0.0, mixer={"name": "softmax", "heads": 4}).eval()
    assert model.head.weight is model.embed.weight and model.head.bias is not None
    ids = torch.randint(0, 50, (1, 8))
    out = model(ids, token_type_ids=torch.zeros_like(ids))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1)
    mask = torch.ones(1, 12, dtype=torch.bool)
    mask[:, 8:] = False
    out_p = model(padded, attention_mask=mask)
    torch.testing.assert_close(out_p.logits[:, :8], out.logits, atol=1e-5, rtol=1e-4)
    assert out.extra["nsp_logits"].shape == (1, 2)
    seg = model(ids, token_type_ids=torch.ones_like(ids)).logits
    assert not torch.allclose(seg, out.logits)            # segment embeddings are used


def test_transformer_learns_reverse_and_beam_matches_greedy():
    """A tiny encoder–decoder learns to reverse sequences; greedy (with the decoder cache) and
    beam search decode the learned reversal."""
    torch.manual_seed(0)
    V, BOS, EOS, L = 12, 10, 11, 6
    model = tevo.build_model("transformer", vocab_size=V, d_model=32, n_layers=2, n_dec_layers=2,
                             max_len=16, dropout=0.0, mixer={"name": "softmax", "heads": 4},
                             ffn={"name": "mlp", "d_ff": 64, "activation": "relu"},
                             residual="pre_ln")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(600):
        src = torch.randint(0, 10, (64, L))
        tgt = torch.cat([torch.full((64, 1), BOS), src.flip(1), torch.full((64, 1), EOS)], 1)
        logits = model(src, tgt[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), tgt[:, 1:].reshape(-1))
        opt.zero_grad(); loss.backward(); opt.step()
    model.eval()
    src = torch.randint(0, 10, (8, L))
    greedy = model.greedy(src, BOS, EOS, L + 1)
    acc = (greedy[:, :L] == src.flip(1)).float().mean().item()
    assert acc > 0.9, acc
    beam = model.beam_search(src, BOS, EOS, L + 1, beam=3)
    assert (beam[:, :L] == src.flip(1)).float().mean().item() > 0.9


def test_gpt3_preset_alternates_dense_and_banded_layers():
    """GPT-3 §2.1: dense and locally banded layers alternate; a token past the band is seen by
    the dense layers only, and cached decoding equals the full pass."""
    from tevo.config import load_config
    cfg = load_config("gpt3", ["model.d_model=32", "model.n_layers=4", "model.vocab_size=50",
                               "model.mixer.heads=2", 'model.layers={"1,3": {mixer: {name: local, heads: 2, window: 4}}}'])
    model = tevo.build_model(cfg).eval()
    names = [type(b.sublayers[0]).__name__ for b in model.blocks.blocks]
    assert names[0] == names[2] == "SoftmaxAttention" and names[1] == names[3] != names[0]
    ids = torch.randint(0, 50, (2, 14))
    full = model(ids).logits
    cached = cached_logits(model, ids)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)
    band = model.blocks.blocks[1].sublayers[0]
    assert band.window == 4
