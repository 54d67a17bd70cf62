"""Image models on a 2-D token grid: data (digits, ImageFolder), the ViT / MetaFormer models,
the image-classification objective, training through the one Trainer, `tevo eval`'s confusion
matrix, and the one-line errors for bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tevo
from tevo.config import load_config, model_config
from tevo.errors import ConfigError, InputError
from tevo.nn.context import MixerContext
from tevo.registry import MIXERS, MODELS, OBJECTIVES

pytest.importorskip("sklearn")

TINY_VIT = ["model.d_model=32", "model.n_layers=2", "model.ffn.mult=2", "model.mixer.heads=2",
            "train.threads=1", "train.progress=false", "train.plot=false"]


def vit(**kw):
    base = dict(arch="vit", d_model=16, n_layers=2, max_len=32, image_size=8, channels=1,
                patch_size=2, vocab_size=10, mixer={"name": "softmax", "heads": 2})
    base.update(kw)
    return tevo.build_model(base).eval()


# -- data ------------------------------------------------------------------------------------
def test_digits_split_is_fixed_stratified_and_disjoint():
    from tevo.data.images import Digits, stratified_split
    d = Digits().load()
    assert d.images.shape == (1797, 1, 8, 8) and 0 <= d.images.min() and d.images.max() <= 1
    a = stratified_split(d.labels, 0.15, 0.15)
    b = stratified_split(d.labels, 0.15, 0.15)
    for s in a:
        np.testing.assert_array_equal(a[s], b[s])                    # fixed
    sets = [set(a[s].tolist()) for s in ("train", "val", "test")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert sum(map(len, sets)) == 1797
    for c in range(10):                                               # stratified per class
        n_c = (d.labels == c).sum()
        assert abs((d.labels[a["test"]] == c).sum() - 0.15 * n_c) <= 1


def _write_folder(root, sizes=None, bad=None):
    from PIL import Image
    rng = np.random.RandomState(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(10):
            hw = (sizes or {}).get((c, i), (6, 6))
            Image.fromarray(rng.randint(0, 255, (*hw, 3), dtype=np.uint8)).save(
                root / c / f"{i}.png")
    if bad:
        (root / "dog" / bad).write_bytes(b"not an image at all")


def test_image_folder_reads_classes_and_refuses_bad_files(tmp_path):
    from tevo.data.images import ImageFolder
    _write_folder(tmp_path / "ok")
    s = ImageFolder(str(tmp_path / "ok")).load()
    assert s.images.shape == (20, 3, 6, 6) and s.classes == ["cat", "dog"]
    assert sorted(np.bincount(s.labels).tolist()) == [10, 10]
    from tevo.train.trainer import train                 # data.path= trains on the folder
    cfg = load_config("vit", TINY_VIT + [f"data.path={tmp_path / 'ok'}", "model.patch_size=3",
                                         "train.steps=2", "train.eval_every=0",
                                         f"train.out_dir={tmp_path / 'run'}"])
    assert train(cfg)["params"] > 0
    saved = load_config(tmp_path / "run" / "config.yaml").model
    assert (saved.image_size, saved.channels, saved.vocab_size) == ([6, 6], 3, 2)
    _write_folder(tmp_path / "mixed", sizes={("dog", 3): (7, 6)})
    with pytest.raises(InputError, match=r"3\.png.*one size"):
        ImageFolder(str(tmp_path / "mixed")).load()
    _write_folder(tmp_path / "bad", bad="broken.png")
    with pytest.raises(InputError, match="cannot read image .*broken.png"):
        ImageFolder(str(tmp_path / "bad")).load()


# -- objective and models ----------------------------------------------------------------------
def test_image_classification_is_cross_entropy_and_accuracy():
    obj = OBJECTIVES.build("image_classification")
    m = vit()
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 4, 5])
    loss, metrics = obj(m, {"images": x, "labels": y})
    logits = m(x).logits
    torch.testing.assert_close(loss, F.cross_entropy(logits, y))
    s, n = metrics["accuracy"]
    assert int(n) == 6 and int(s) == int((logits.argmax(-1) == y).sum())
    with pytest.raises(ConfigError, match="image model"):
        obj.check_model(tevo.build_model({"arch": "gpt", "d_model": 16, "n_layers": 1}))


def test_vit_digits_learns_and_is_patch_permutation_aware(tmp_path):
    # without positions the Transformer ignores where a patch is: permuting the patches
    # leaves the [class] output unchanged; ViT's learned positions make it depend on them
    x = torch.randn(2, 1, 8, 8)
    perm = torch.tensor([2, 0, 3, 1])                   # 2×2 grid of 4×4 patches, shuffled
    def shuffle(img):
        p = img.unfold(2, 4, 4).unfold(3, 4, 4).reshape(2, 1, 4, 4, 4)[:, :, perm]
        return p.reshape(2, 1, 2, 2, 4, 4).permute(0, 1, 2, 4, 3, 5).reshape(2, 1, 8, 8)
    assert not torch.allclose(shuffle(x), x)
    for pos, same in (("none", True), ("learned", False)):
        torch.manual_seed(0)
        m = vit(patch_size=4, position=pos)
        with torch.no_grad():
            m.head.weight.normal_()
            if pos == "learned":
                m.pos_embed.table.weight.normal_()
        a, b = m(x).logits, m(shuffle(x)).logits
        assert torch.allclose(a, b, atol=1e-5) == same
    # and it learns the digits through the one Trainer
    from tevo.train.trainer import train
    cfg = load_config("vit", TINY_VIT + ["train.steps=80", "train.max_minutes=null", "train.warmup=10",
                                         f"train.out_dir={tmp_path / 'run'}",
                                         "train.eval_every=0"])
    s = train(cfg)
    assert s["val_accuracy"] > 0.6, s                   # chance is 0.1
    assert s["params"] < 60_000


def test_metaformer_is_norm_mixer_norm_mlp_over_any_mixer():
    torch.manual_seed(0)
    stages = [{"n_layers": 1, "d_model": 16}, {"n_layers": 1, "d_model": 32}]
    m = tevo.build_model(dict(arch="metaformer", image_size=8, channels=1, patch_size=2,
                              vocab_size=10, mixer="pool", stages=stages, max_len=32)).eval()
    assert m.grids == [(4, 4), (2, 2)] and m.pool == "mean" and m.cls is None
    blk = m.stages[0].blocks[0]
    x = torch.randn(2, 16, 16)
    ctx = MixerContext(grid=(4, 4))
    norm1, norm2 = blk.residuals[0].norm, blk.residuals[1].norm
    h = x + blk.sublayers[0](norm1(x), ctx)[0]                      # X + Mixer(Norm(X))
    ref = h + blk.sublayers[1](norm2(h))                            # + MLP(Norm(.))
    torch.testing.assert_close(blk(x, ctx)[0], ref)
    # the mixer receives each stage's grid
    seen = []
    for st in m.stages:
        st.blocks[0].sublayers[0].register_forward_pre_hook(
            lambda mod, args: seen.append(args[1].grid))
    m(torch.randn(1, 1, 8, 8))
    assert seen == [(4, 4), (2, 2)]
    # any mixer that fits a grid builds and runs in the same model
    for name in ("gfnet", "afno", "fno", "shift", "hypermixer", "gmlp", "softmax", "xca"):
        mm = tevo.build_model(dict(arch="metaformer", image_size=8, channels=1, patch_size=2,
                                   vocab_size=10, mixer=name, stages=stages, max_len=32))
        out = mm(torch.randn(2, 1, 8, 8))
        assert out.logits.shape == (2, 10) and torch.isfinite(out.logits).all(), name


# -- bad input: one line each ------------------------------------------------------------------
def test_bad_input_is_one_line():
    cases = [
        (dict(patch_size=3), "model.patch_size: patch size 3 does not divide the image size 8×8"),
        (dict(mixer="local"), "model.mixer: mixer 'local' reads a 1-D sequence"),
        (dict(mixer="gfnet"), "model.pool: mixer 'gfnet' reads the 2-D grid"),
        (dict(stages=[{"n_layers": 1}] * 4), "even grid"),        # 4×4 → 2×2 → 1×1 → ?
    ]
    for kw, msg in cases:
        with pytest.raises(ConfigError) as e:
            vit(**kw)
        assert msg in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="model.mixer: mixer 'gfnet' needs a 2-D token grid"):
        model_config({"arch": "gpt", "mixer": "gfnet"})
    with pytest.raises(InputError, match=r"images must be \(B, 1, 8, 8\)"):
        vit()(torch.randn(2, 1, 9, 8))
    with pytest.raises(ConfigError, match="image_classification"):
        load_config("default", ["data.corpus=digits"]) and tevo.train.trainer.Trainer(
            load_config("default", ["data.corpus=digits"]))


def test_grid_mixers_say_whether_they_take_text():
    text = {n for n in MIXERS.names() if MIXERS.get(n).supports.grid
            and MIXERS.get(n).supports.text}
    assert {"fno", "afno", "pool", "shift"} <= text and "gfnet" not in text
    assert MIXERS.get("pool").supports.causal and not MIXERS.get("shift").supports.causal
    # a text-capable grid mixer runs in a language model
    lm = tevo.build_model({"arch": "gpt", "d_model": 16, "n_layers": 1, "mixer": "pool",
                           "vocab_size": 11})
    assert lm(torch.randint(0, 11, (2, 7))).logits.shape == (2, 7, 11)


# -- the command line --------------------------------------------------------------------------
def test_tevo_train_and_eval_report_accuracy_and_confusion_png(tmp_path, capsys):
    from tevo.cli import main
    run = tmp_path / "run"
    assert main(["train", "vit", *TINY_VIT, "train.steps=20", "train.eval_every=0",
                 "train.max_minutes=null", f"train.out_dir={run}", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert "val_accuracy" in s
    assert main(["eval", str(run), "--split", "test", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    cm = np.array(out["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == out["eval_tokens"]
    assert abs(np.trace(cm) / cm.sum() - out["accuracy"]) < 1e-9
    png = run / "confusion_test.png"
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("preset,mixer,steps", [
    ("poolformer", "pool", 40), ("gfnet", "gfnet", 100), ("xcit", "xca", 100),
    ("swinv2", "swin_window", 60), ("nest", "nest", 60), ("crossformer", "crossformer_lsda", 60)])
def test_vision_presets_use_their_mixers_and_learn(preset, mixer, steps, tmp_path):
    from tevo.train.trainer import Trainer
    cfg = load_config(preset, ["train.threads=1", "train.progress=false", "train.plot=false",
                               f"train.steps={steps}", "train.warmup=10", "train.max_minutes=null",
                               "train.eval_every=0", f"train.out_dir={tmp_path}"])
    tr = Trainer(cfg)
    blocks = [b for st in tr.model.stages for b in st.blocks]
    assert {type(b.sublayers[0]).registry_name for b in blocks} == {mixer}
    s = tr.fit()
    assert s["val_accuracy"] > 0.3, s                   # chance is 0.1


def test_bench_vision_quick_runs_and_reports(tmp_path):
    from tevo.bench._run import run
    (rep,) = run("vision", quick=True, out=str(tmp_path), presets=["vit"],
                 mixers=["pool", "gfnet"], steps=3, threads=1)
    rows = {r["row"]: r for r in rep.data["rows"]}
    assert set(rows) == {"vit", "metaformer + pool", "metaformer + gfnet"}, rep.skipped
    assert all(0 <= r["mean"] <= 1 and r["params"] > 0 for r in rows.values())
    md = (tmp_path / "vision.md").read_text()
    assert "metaformer + gfnet" in md and "Smoke test" in md
