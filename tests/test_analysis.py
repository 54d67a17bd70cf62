"""``tevo analyze ffn-memory``: FFN keys as pattern detectors and values as next-token
distributions (Geva et al., 2021), on a tiny model trained here and saved as a run folder."""
import json

import pytest
import torch

import tevo
from tevo.analysis.ffn_memory import ffn_kv_memory, kv_ffns
from tevo.cli import main
from tevo.config import load_config, save_config
from tevo.data.tokenizer import load_tokenizer
from tevo.train.checkpoint import save_weights

TEXT = ("the cat sat on the mat. the dog sat on the log. " * 40)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder as the trainer writes it: config.yaml + checkpoints/step_N/model.safetensors,
    after a short training on a repetitive text (bytes tokenizer)."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("run")
    cfg = load_config({"model": {"arch": "gpt", "vocab_size": 256, "d_model": 32, "n_layers": 2,
                                 "max_len": 64, "mixer": {"name": "softmax", "heads": 4},
                                 "ffn": {"name": "mlp", "mult": 2, "activation": "relu"}},
                       "data": {"tokenizer": "bytes", "seq_len": 48}})
    save_config(cfg, d / "config.yaml")
    tok = load_tokenizer("bytes")
    ids = torch.tensor(tok.encode(TEXT))
    model = tevo.build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    first = None
    for step in range(50):
        starts = torch.randint(0, len(ids) - 33, (8,))
        batch = torch.stack([ids[s:s + 33] for s in starts])
        logits = model(batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), batch[:, 1:].reshape(-1))
        opt.zero_grad(); loss.backward(); opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first                          # the model did learn the text
    (d / "checkpoints" / "step_00000050").mkdir(parents=True)
    save_weights(model, d / "checkpoints" / "step_00000050" / "model.safetensors")
    (d / "text.txt").write_text(TEXT[:1200])
    return d


def test_ffn_memory_tool_on_a_trained_model(run_dir, capsys):
    assert main(["analyze", "ffn-memory", str(run_dir), "--text", str(run_dir / "text.txt"),
                 "--keys", "4", "--top", "3", "--tokens", "5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [lay["layer"] for lay in report["layers"]] == [0, 1]
    assert all(len(lay["keys"]) == 4 for lay in report["layers"])
    # the same report from the library, checked against a brute-force pass
    cfg = load_config(run_dir / "config.yaml")
    model = tevo.build_model(cfg.model)
    from tevo.train.checkpoint import load_weights
    load_weights(model, run_dir / "checkpoints" / "step_00000050" / "model.safetensors")
    model.eval()
    tok = load_tokenizer("bytes")
    ids = torch.tensor(tok.encode(TEXT[:1200]))
    L = 64
    win = ids[:(len(ids) // L) * L].view(-1, L)
    coefs = {}
    with torch.no_grad():                          # m_i = f(x·k_i), recomputed block by block
        x = model.embed(win) + model.pos.embed(torch.zeros_like(model.embed(win)),
                                               torch.arange(L).expand(win.shape[0], L))
        ctx = tevo.MixerContext(causal=True, positions=torch.arange(L).expand(win.shape[0], L))
        for i, blk in enumerate(model.blocks.blocks):
            att, ffn = blk.sublayers
            r_a, r_f = blk.residuals
            x = x + att(r_a.norm(x), ctx)[0]
            h = r_f.norm(x)
            coefs[i] = torch.relu(ffn.fc1(h)).reshape(-1, ffn.fc1.out_features)
            x = x + ffn(h)
    stream = win.flatten()
    for lay in report["layers"]:
        c = coefs[lay["layer"]]
        # reported keys are the most strongly triggered ones, in order
        assert [k["key"] for k in lay["keys"]] == c.max(0).values.topk(4).indices.tolist()
        for k in lay["keys"]:
            ref_v, ref_p = c[:, k["key"]].topk(3)
            got = [t["coef"] for t in k["triggers"]]
            torch.testing.assert_close(torch.tensor(got), ref_v, atol=1e-4, rtol=1e-4)
            top = k["triggers"][0]
            assert top["prefix"].endswith(tok.decode([int(stream[top["position"]])]))
            # value → vocabulary: p_i = softmax(v_i · Eᵀ)
            v = model.blocks.blocks[lay["layer"]].sublayers[1].fc2.weight[:, k["key"]]
            p = (model.head.weight @ v).softmax(-1)
            assert [t["id"] for t in k["value_tokens"]] == p.topk(5).indices.tolist()
        assert 0.0 <= lay["agreement"] <= 1.0
    # plain-text report, explicit keys and layers, and the --weights path
    assert main(["analyze", "ffn-memory", str(run_dir), "--text", str(run_dir / "text.txt"),
                 "--layers", "1", "--keys", "0,7", "--weights",
                 str(run_dir / "checkpoints" / "step_00000050")]) == 0
    out = capsys.readouterr().out
    assert "layer 1" in out and "key 0" in out and "key 7" in out and "value →" in out
    rep = ffn_kv_memory(model, ids, tok.decode, keys=2)
    assert len(rep["layers"]) == len(kv_ffns(model)) == 2


def test_ffn_memory_errors(run_dir, tmp_path, capsys):
    assert main(["analyze", "ffn-memory", str(tmp_path)]) == 2          # not a run folder
    assert "config.yaml" in capsys.readouterr().err
    assert main(["analyze", "ffn-memory", str(run_dir), "--text", str(run_dir / "text.txt"),
                 "--layers", "5"]) == 2
    assert "layer" in capsys.readouterr().err
    moe = tevo.build_model({"arch": "gpt", "vocab_size": 20, "d_model": 16, "n_layers": 1,
                            "max_len": 16, "ffn": {"name": "moe", "experts": 2}})
    with pytest.raises(tevo.InputError):
        ffn_kv_memory(moe, torch.randint(0, 20, (40,)))
