"""DDPM (Ho et al., 2020) with a Transformer denoiser: the closed form q(x_t | x_0) against t
steps of the forward process (moments), the ε-prediction loss as eq. 14 by hand, Algorithm 2
with a perfect ε-oracle, a short run through the one Trainer, `tevo generate` / `tevo eval`,
and one-line errors for bad options."""
from __future__ import annotations

import json
import math
import struct
import zlib

import pytest
import torch

import tevo
from tevo.errors import ConfigError
from tevo.models.diffusion import DiffusionSchedule, image_grid_png
from tevo.registry import OBJECTIVES

B1, BT = 1e-4, 0.02                              # the paper's linear schedule (§4)


def alpha_bars(T, b1=B1, bT=BT):
    """ᾱ_t = Π_{s≤t} (1 − β_s), β_s = β_1 + (s−1)(β_T − β_1)/(T−1), by a loop; [0] = 1."""
    out, prod = [1.0], 1.0
    for s in range(1, T + 1):
        beta = b1 + (s - 1) * (bT - b1) / (T - 1) if T > 1 else b1
        prod *= 1.0 - beta
        out.append(prod)
    return out


def denoiser(T=20, **kw):
    base = dict(arch="diffusion", d_model=16, n_layers=2, max_len=32, image_size=8, channels=1,
                patch_size=2, vocab_size=10, position="learned",
                mixer={"name": "softmax", "heads": 2}, extra={"timesteps": T})
    base.update(kw)
    return tevo.build_model(base)


def test_closed_form_equals_t_forward_steps():
    T = 200                                      # the paper's β range over fewer steps (fast)
    sched = DiffusionSchedule(T, B1, BT)
    ab = alpha_bars(T)
    torch.testing.assert_close(sched.alpha_bar, torch.tensor(ab, dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    N = 40_000
    x0 = torch.tensor([-1.0, -0.3, 0.5, 1.0], dtype=torch.float64)
    x = x0.expand(N, 4).clone()                  # N chains per starting value
    checks = {1, 10, 50, 200}
    for step in range(1, T + 1):                 # eq. 2, one step at a time
        t = torch.full((N,), step)
        x = sched.q_step(x, t, torch.randn(N, 4, generator=g, dtype=torch.float64))
        if step in checks:
            mean, var = math.sqrt(ab[step]) * x0, 1.0 - ab[step]
            # t steps of the chain vs the closed form's moments (5 standard errors)
            torch.testing.assert_close(x.mean(0), mean, atol=5 * math.sqrt(var / N), rtol=0)
            torch.testing.assert_close(x.var(0), torch.full((4,), var, dtype=torch.float64),
                                       atol=5 * var * math.sqrt(2 / N), rtol=0)
            # and samples of the closed form (eq. 4) have the same moments
            xc = sched.q_sample(x0.expand(N, 4), t,
                                torch.randn(N, 4, generator=g, dtype=torch.float64))
            torch.testing.assert_close(xc.mean(0), mean, atol=5 * math.sqrt(var / N), rtol=0)
            torch.testing.assert_close(xc.var(0), x.var(0), atol=10 * var * math.sqrt(2 / N),
                                       rtol=0)
    assert 1.0 - ab[T] > 0.85                    # x_T is mostly noise


def test_loss_is_eq14_simple_loss_by_hand():
    torch.manual_seed(0)
    T = 20
    model = denoiser(T).train()
    obj = OBJECTIVES.build("ddpm", "objective")
    obj.check_model(model)
    x0 = torch.rand(5, 1, 8, 8) * 2 - 1
    torch.manual_seed(1)
    loss, metrics = obj(model, {"images": x0})
    torch.manual_seed(1)                         # the same draws, by hand (Algorithm 1)
    t = torch.randint(1, T + 1, (5,))
    eps = torch.randn(x0.shape)
    ab = torch.tensor(alpha_bars(T, B1, BT), dtype=torch.float32)[t].view(5, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    hand = ((eps - model(x_t, t).logits) ** 2).mean()
    torch.testing.assert_close(loss, hand, rtol=1e-5, atol=1e-6)
    s, n = metrics["loss"]
    assert int(n) == x0.numel()
    torch.testing.assert_close(float(s) / int(n), hand.item(), rtol=1e-5, atol=1e-6)
    # the timestep reaches the denoiser: another t changes the prediction
    assert not torch.allclose(model(x_t, t).logits, model(x_t, t % T + 1).logits)
    # validation draws are fixed: two evaluations agree
    model.eval()
    a, _ = obj(model, {"images": x0})
    b, _ = obj(model, {"images": x0})
    assert a.item() == b.item()


def test_sampling_with_a_perfect_oracle_recovers_x0():
    T = 100
    sched = DiffusionSchedule(T, B1, BT)
    ab = torch.tensor(alpha_bars(T), dtype=torch.float64)
    alpha = torch.tensor([1.0] + [1 - (B1 + (s - 1) * (BT - B1) / (T - 1))
                                  for s in range(1, T + 1)], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1

    def oracle(x_t, t):                          # the true ε given x_0
        """(x_t − √ᾱ_t x_0) / √(1−ᾱ_t)"""
        a = ab[t].view(-1, 1, 1, 1)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    # Algorithm 2's mean with the oracle's ε is the posterior mean μ̃_t(x_t, x_0) (eq. 7)
    for step in (2, 10, 50, 100):
        t = torch.full((6,), step)
        x_t = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        a_t, ab_t, ab_p = alpha[step], ab[step], ab[step - 1]
        mu = ((ab_p.sqrt() * (1 - a_t) / (1 - ab_t)) * x0
              + (a_t.sqrt() * (1 - ab_p) / (1 - ab_t)) * x_t)
        torch.testing.assert_close(sched.p_mean(x_t, t, oracle(x_t, t)), mu, rtol=1e-10,
                                   atol=1e-10)
    # and the whole ancestral chain from pure noise lands on x_0
    out = sched.sample(oracle, x0.shape, torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-8)
    # the chain follows its oracle: the oracle of another image lands there, not on x_0
    y0 = x0.flip(0)

    def shifted(x, t):                           # = the oracle of y0
        a = ab[t].view(-1, 1, 1, 1)
        return oracle(x, t) + (x0 - y0) * a.sqrt() / (1 - a).sqrt()
    other = sched.sample(shifted, x0.shape, torch.Generator().manual_seed(3),
                         dtype=torch.float64)
    torch.testing.assert_close(other, y0, rtol=0, atol=1e-8)
    assert (other - x0).abs().max() > 0.1


def test_clipped_sampling_is_eq7_posterior_mean_of_the_clipped_x0():
    """The authors' clip_denoised: μ̃_t(x_t, clip(x̂_0)) by eq. 7, written out by hand; with a
    clip no x̂_0 reaches it is Algorithm 2's mean exactly; the chain stays in [−1, 1]."""
    T = 50
    sched = DiffusionSchedule(T, B1, BT)
    ab = alpha_bars(T)
    g = torch.Generator().manual_seed(0)
    for step in (1, 2, 25, 50):
        t = torch.full((4,), step)
        x_t = torch.randn(4, 1, 4, 4, generator=g, dtype=torch.float64)
        eps = torch.randn(4, 1, 4, 4, generator=g, dtype=torch.float64) * 3
        beta = B1 + (step - 1) * (BT - B1) / (T - 1)
        x0 = ((x_t - math.sqrt(1 - ab[step]) * eps) / math.sqrt(ab[step])).clamp(-1, 1)
        mu = (math.sqrt(ab[step - 1]) * beta / (1 - ab[step]) * x0
              + math.sqrt(1 - beta) * (1 - ab[step - 1]) / (1 - ab[step]) * x_t)
        torch.testing.assert_close(sched.p_mean_clipped(x_t, t, eps, 1.0), mu, rtol=1e-10,
                                   atol=1e-10)
        torch.testing.assert_close(sched.p_mean_clipped(x_t, t, eps, 1e9),
                                   sched.p_mean(x_t, t, eps), rtol=1e-9, atol=1e-9)
    # a denoiser that predicts far too much noise: unclipped the chain leaves the data's
    # range, clipped it cannot (at t = 1 the mean is x̂_0 itself)
    def wild(x, t):
        return -5 * x
    a = sched.sample(wild, (8, 1, 4, 4), torch.Generator().manual_seed(1), dtype=torch.float64)
    b = sched.sample(wild, (8, 1, 4, 4), torch.Generator().manual_seed(1), dtype=torch.float64,
                     clip=1.0)
    assert a.abs().max() > 2 and b.abs().max() <= 1 + 1e-12
    for bad in (0, -1.0, True, "1"):
        with pytest.raises(ConfigError) as e:
            sched.sample(wild, (1, 1, 2, 2), clip=bad)
        assert "clip" in str(e.value) and "\n" not in str(e.value)


def test_digits_scorer_separates_digits_from_noise():
    """The study's score: both classifiers are far more confident on held-out digits than on
    noise, and a training image is at distance 0 from the training set."""
    pytest.importorskip("sklearn")
    from tevo.bench.diffusion import SETS, digits_scorer, digits_splits, noise_sets
    sp = digits_splits()
    scorer = digits_scorer()
    real = scorer.score(sp["test"][0][:100])
    noise = noise_sets(100, (1, 8, 8), 0)
    for name in SETS[2:]:
        sc = scorer.score(noise[name])
        assert real["forest"] > sc["forest"] + 0.3 and real["logreg"] > sc["logreg"], (name, sc)
        assert real["nn_dist"] < sc["nn_dist"] - 2, (name, sc)
    assert scorer.score(sp["train"][0][:5])["nn_dist"] < 1e-6
    assert sum(real["classes"]) == 100


def test_bench_diffusion_quick_scores_every_set(tmp_path):
    pytest.importorskip("sklearn")
    from tevo.bench import run
    run("diffusion", quick=True, steps=3, batch_size=8, timesteps=5, samples=4, threads=1,
        out=str(tmp_path))
    res = json.loads((tmp_path / "diffusion.json").read_text())["results"]
    row, = res["seeds"]
    for name in ("samples", "noise N(0,I) clipped", "noise U[−1,1]"):
        assert set(row[name]) >= {"logreg", "forest", "nn_dist", "classes"}
        assert sum(row[name]["classes"]) == 4
    assert len(res["claims"]) == 6 and not any(c["samples_better"] for c in res["claims"].values())
    md = (tmp_path / "diffusion.md").read_text()
    assert "Smoke test, not a result" in md and "no measurable difference" in md


TINY = ["model.d_model=32", "model.n_layers=2", "model.ffn.mult=2", "model.mixer.heads=2",
        "model.extra.timesteps=50", "train.batch_size=64", "train.lr=3e-3",
        "train.threads=1", "train.progress=false", "train.plot=false"]


def test_short_training_lowers_the_loss(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from tevo.cli import main
    run = tmp_path / "run"
    assert main(["train", "ddpm", *TINY, "train.steps=60", "train.warmup=5", "train.eval_every=0",
                 "train.max_minutes=null", f"train.out_dir={run}", "--json"]) == 0
    capsys.readouterr()
    s = json.loads((run / "summary.json").read_text())
    # ε̂ = 0 scores E||ε||² = 1 per pixel; the trained denoiser is well below it
    assert s["final_val_loss"] < 0.6, s
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in rows if r.get("split") == "train"]
    assert train[-1] < 0.7 * train[0], train
    # tevo eval reports the MSE (no confusion matrix), tevo generate writes a PNG grid
    assert main(["eval", str(run), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert "confusion_matrix" not in ev and ev["loss"] < 0.6
    assert main(["generate", str(run), "--samples", "6"]) == 0
    png = run / "samples.png"
    assert capsys.readouterr().out.strip() == str(png)
    w, h, depth, colour = struct.unpack(">IIBB", png.read_bytes()[16:26])
    assert (w, h, depth, colour) == (3 * 9 + 1, 2 * 9 + 1, 8, 0)     # 3×2 tiles of 8×8 + gaps
    # --clip 0 is the paper's unclipped Algorithm 2; a negative clip is a one-line error
    assert main(["generate", str(run), "--samples", "2", "--clip", "0",
                 "--out", str(tmp_path / "raw.png")]) == 0
    capsys.readouterr()
    assert main(["generate", str(run), "--samples", "2", "--clip", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--clip" in err and "\n" not in err


def test_png_grid_holds_the_pixels(tmp_path):
    imgs = torch.linspace(-1, 1, 2 * 4 * 4).view(2, 1, 4, 4)
    data = image_grid_png(imgs, tmp_path / "g.png", nrow=2).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    assert (w, h) == (11, 6)
    n = struct.unpack(">I", data[33:37])[0]
    assert data[37:41] == b"IDAT"
    raw = zlib.decompress(data[41:41 + n])
    rows = [raw[i * (w + 1) + 1:(i + 1) * (w + 1)] for i in range(h)]
    assert all(r[0] == 0 for r in rows)                       # the gap
    want = ((imgs[1, 0, 2] + 1) / 2 * 255).round().to(torch.uint8).tolist()
    assert list(rows[3][6:10]) == want                         # tile 2, its third row


@pytest.mark.parametrize("override, option", [
    ({"extra": {"timesteps": 0}}, "model.extra.timesteps"),
    ({"extra": {"timesteps": -3}}, "model.extra.timesteps"),
    ({"extra": {"beta_start": 0.0}}, "model.extra.beta_start"),
    ({"extra": {"beta_end": 1.0}}, "model.extra.beta_end"),
    ({"extra": {"beta_start": 0.1, "beta_end": 0.01}}, "model.extra.beta_start"),
    ({"extra": {"steps": 5}}, "model.extra.steps"),
    ({"patch_size": 3}, "model.patch_size"),
])
def test_bad_input_is_one_line(override, option):
    with pytest.raises(ConfigError) as e:
        denoiser(**override)
    assert option in str(e.value) and "\n" not in str(e.value)


def test_ddpm_needs_a_diffusion_model():
    vit = tevo.build_model(dict(arch="vit", d_model=16, n_layers=1, max_len=32, image_size=8,
                                channels=1, patch_size=2, vocab_size=10))
    with pytest.raises(ConfigError) as e:
        OBJECTIVES.build("ddpm", "objective").check_model(vit)
    assert "diffusion" in str(e.value) and "\n" not in str(e.value)
