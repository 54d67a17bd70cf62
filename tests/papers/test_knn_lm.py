"""kNN-LM (Khandelwal et al., 2020): λ = 0 is the base model, λ > 0 is eq. 1–3 over the exact k
nearest keys (checked against brute force), faiss and the torch fallback return the same
neighbours, and `tevo knn build` / `tevo eval --knn` work on a trained run, refusing a datastore
that is missing, truncated or made by another model."""
import json
import shutil

import numpy as np
import pytest
import torch

import tevo
from tevo import cli
from tevo.config import load_config
from tevo.errors import ConfigError, InputError
from tevo.nn.knn import KNNIndex
from tevo.train.trainer import train
from test_train import corpus, tiny  # noqa: F401  (corpus: the fixture)

V = 17


class _Store:
    """An in-memory datastore: exact squared-L2 search through KNNIndex (torch)."""

    def __init__(self, keys, values):
        self.keys, self.values = keys, values
        self.index = KNNIndex(keys.shape[1], backend="torch")
        self.index.add(keys)

    def search(self, q, k):
        d, i = self.index.search(q, k)
        return d, self.values[i]


def _models(lam, k=5, T=2.0):
    torch.manual_seed(0)
    cfg = {"arch": "gpt", "vocab_size": V, "d_model": 16, "n_layers": 2,
           "mixer": {"name": "softmax", "heads": 2}, "position": "rope"}
    base = tevo.build_model(cfg).eval()
    knn = tevo.build_model({**cfg, "arch": "knn_lm",
                            "extra": {"knn_lambda": lam, "knn_k": k, "knn_temperature": T}}).eval()
    knn.load_state_dict(base.state_dict())
    return base, knn


def test_lambda_zero_equals_the_base_model():
    base, knn = _models(0.0)
    keys, values = torch.randn(300, 16), torch.randint(0, V, (300,))
    knn.attach_datastore(_Store(keys, values))
    ids = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(knn(ids).logits, base(ids).logits, atol=0, rtol=0)


def test_interpolation_is_eq_3_over_the_brute_force_neighbours():
    lam, k, T = 0.3, 5, 2.0
    base, knn = _models(lam, k, T)
    ids = torch.randint(0, V, (2, 7))
    with torch.no_grad():
        out = base(ids, return_hidden=True)
        h = out.hidden.reshape(-1, 16)
        keys = torch.cat([h[::2] + 0.01 * torch.randn_like(h[::2]), torch.randn(200, 16)])
        values = torch.randint(0, V, (len(keys),))
        knn.attach_datastore(_Store(keys, values))
        got = knn(ids).logits.reshape(-1, V)
        p_lm = torch.softmax(out.logits.reshape(-1, V).double(), -1)
    for i in range(h.shape[0]):
        d = ((keys.double() - h[i].double()) ** 2).sum(-1).numpy()
        nn_ids = np.argsort(d)[:k]
        w = np.exp(-d[nn_ids] / T)
        p_knn = np.zeros(V)
        for j, wj in zip(nn_ids, w):
            p_knn[values[j]] += wj / w.sum()
        ref = lam * p_knn + (1 - lam) * p_lm[i].numpy()
        np.testing.assert_allclose(got[i].exp().double().numpy(), ref, atol=1e-5)


def test_faiss_and_the_torch_fallback_return_the_same_neighbours():
    """Exact flat search (l2 and inner product): faiss and brute-force torch agree on the ids
    and the scores; IVF probing every cell is exact too; HNSW finds most true neighbours."""
    g = torch.Generator().manual_seed(0)
    keys, q = torch.randn(2000, 16, generator=g), torch.randn(64, 16, generator=g)
    for metric in ("l2", "ip"):
        a, b = KNNIndex(16, metric=metric, backend="faiss"), KNNIndex(16, metric=metric,
                                                                       backend="torch")
        a.add(keys[:1000])
        a.add(keys[1000:])
        b.add(keys)
        sa, ia = a.search(q, 10)
        sb, ib = b.search(q, 10)
        assert torch.equal(ia, ib), metric
        torch.testing.assert_close(sa, sb, atol=1e-3, rtol=1e-4)
    exact = KNNIndex(16, backend="torch")
    exact.add(keys)
    _, ref = exact.search(q, 10)
    ivf = KNNIndex(16, kind="ivf", backend="faiss", nlist=16, nprobe=16)
    ivf.add(keys)
    assert torch.equal(ivf.search(q, 10)[1], ref)
    hnsw = KNNIndex(16, kind="hnsw", backend="faiss")
    hnsw.add(keys)
    found = hnsw.search(q, 10)[1]
    recall = np.mean([len(set(found[i].tolist()) & set(ref[i].tolist())) / 10
                      for i in range(len(q))])
    assert recall > 0.9, recall
    with pytest.raises(ConfigError, match="^knn.index"):
        KNNIndex(16, kind="hnsw", backend="torch")


def test_build_and_eval_a_trained_run_and_refuse_a_wrong_or_damaged_store(corpus, tmp_path,
                                                                          capsys):
    run = tmp_path / "run"
    train(load_config("default", tiny(corpus, run, "train.steps=8", "train.eval_every=0",
                                      "model.position=rope")))
    assert cli.main(["knn", "build", str(run), "--max-tokens", "3000", "--json"]) == 0
    man = json.loads(capsys.readouterr().out)
    store = run / "knn"
    assert man["n"] == 3000 and man["d"] == 32 and man["run"] == str(run.resolve())
    assert len(man["weights_sha256"]) == 64 and json.loads((store / "manifest.json").read_text())
    keys = np.load(store / "keys.npy", mmap_mode="r")                # memory-mapped, not pickled
    assert isinstance(keys, np.memmap) and keys.shape == (3000, 32)
    tokens = np.asarray(load_tokens(run))
    assert np.array_equal(np.load(store / "values.npy"), tokens[1:3001])

    ev = ["eval", str(run), "--max-batches", "2", "--json", "--knn", str(store)]
    assert cli.main(ev) == 0
    out = json.loads(capsys.readouterr().out)
    assert np.isfinite(out["bits_per_char"]) and np.isfinite(out["knn_bits_per_char"])
    assert out["knn_bits_per_char"] != out["bits_per_char"]
    assert cli.main([*ev, "--knn-lambda", "0"]) == 0
    zero = json.loads(capsys.readouterr().out)
    assert zero["knn_bits_per_char"] == zero["bits_per_char"] == out["bits_per_char"]

    # bad input: one line on stderr, exit 2, nothing overwritten
    before = (store / "keys.npy").stat().st_mtime_ns
    assert cli.main(["knn", "build", str(run)]) == 2
    assert (store / "keys.npy").stat().st_mtime_ns == before
    other = tmp_path / "other"
    train(load_config("default", tiny(corpus, other, "train.steps=2", "train.eval_every=0",
                                      "model.position=rope")))
    bad_cases = {"another model": ["eval", str(other), "--knn", str(store)],
                 "no kNN datastore": ["eval", str(run), "--knn", str(tmp_path)]}
    broken = tmp_path / "broken"
    shutil.copytree(store, broken)
    with open(broken / "keys.npy", "r+b") as f:
        f.truncate(1000)
    bad_cases["truncated"] = ["eval", str(run), "--knn", str(broken)]
    for what, argv in bad_cases.items():
        capsys.readouterr()
        assert cli.main([*argv, "--max-batches", "1"]) == 2, what
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and what in err, (what, err)


def load_tokens(run):
    from tevo.train.run import load_run
    return load_run(run).data.streams["train"].tokens


def test_bad_knn_options_are_one_line_errors():
    for extra, field in (({"knn_lambda": 1.5}, "model.extra.knn_lambda"),
                         ({"knn_k": 0}, "model.extra.knn_k"),
                         ({"knn_temperature": 0}, "model.extra.knn_temperature")):
        with pytest.raises(ConfigError) as e:
            tevo.build_model({"arch": "knn_lm", "vocab_size": V, "d_model": 16, "n_layers": 1,
                              "mixer": {"name": "softmax", "heads": 2}, "extra": extra})
        assert str(e.value).startswith(field) and "\n" not in str(e.value)
    with pytest.raises(InputError):
        from tevo.inference.knn import Datastore
        Datastore("/nonexistent/store")
