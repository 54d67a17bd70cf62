"""The diffusion study (``tevo bench diffusion``): do a trained DDPM's samples look like digits?

DDPM (Ho et al., 2020) with the Transformer denoiser of ``model.arch=diffusion`` (preset
``ddpm``: T = 1000, linear β 1e-4 → 0.02, ε-prediction loss eq. 14) is trained on the digits'
training split through the one Trainer, one run per seed; ``samples`` images are then drawn by
ancestral sampling (Algorithm 2; with ``clip`` > 0, x̂_0 clipped to [−clip, clip] at each step
as in the authors' code). Two digits classifiers fitted on the same training split — logistic
regression and a random forest of 200 trees (scikit-learn; its probability is the share of
trees voting for the class) — score
four sets of images by their mean max-probability ("confidence"): real held-out digits (the
test split), the samples, and two kinds of pure noise of the same count (x_T ~ N(0, I) clipped
to the data's [−1, 1], and uniform on [−1, 1]). A third score needs no classifier: the mean
distance from each image to its nearest training image (lower is closer to the data). The
claim checked is the issue's: samples beat noise, i.e. the paired difference samples − noise
over seeds has a 95 % t-interval above zero.
"""
from __future__ import annotations

import functools
import tempfile

from ..registry import BENCHMARKS
from ._common import Command, Deadline, Option, Study, fmt, mean_sd, new_report, stderr

OPTIONS = (
    Option("steps", "int", 1500, "training steps per run", quick=10),
    Option("batch_size", "int", 128, "images per step", quick=32),
    Option("lr", "float", 1e-3, "peak learning rate (cosine schedule, 10 % warm-up)"),
    Option("timesteps", "int", 1000, "diffusion steps T (the paper's 1000)", quick=20),
    Option("samples", "int", 100, "images sampled per seed", quick=8),
    Option("clip", "float", 1.0, "clip x̂_0 to [−clip, clip] while sampling (0: the paper's "
                                 "Algorithm 2 unclipped)"),
    Option("seeds", "ints", [0, 1, 2], "training seeds", quick=[0]),
)
SETS = ("real (held-out test)", "samples", "noise N(0,I) clipped", "noise U[−1,1]")
SCORES = (("logreg", "logistic regression confidence", True),
          ("forest", "random forest confidence", True),
          ("nn_dist", "distance to nearest training image", False))


def digits_splits():
    """{split: (images (N, 1, 8, 8) in [−1, 1] as float32 numpy, labels)} of the fixed split."""
    from ..data.images import Digits
    return {s: ((v.images - 0.5) / 0.5, v.labels) for s, v in Digits().splits().items()}


class DigitsScorer:
    """Classifier confidences and nearest-neighbour distance of images in [−1, 1]."""

    def __init__(self, train_x, train_y):
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.linear_model import LogisticRegression
        x = train_x.reshape(len(train_x), -1)
        self.train = x
        # a linear model extrapolates: far from the data it can be sure of a class; a forest's
        # probability is the share of trees voting for it, and trees disagree off the data
        forest = RandomForestClassifier(n_estimators=200, random_state=0)
        self.clfs = {"logreg": LogisticRegression(max_iter=3000).fit(x, train_y),
                     "forest": forest.fit(x, train_y)}

    def score(self, images) -> dict:
        """images (N, 1, 8, 8) numpy in [−1, 1] → {score: mean}, plus the predicted-class
        histogram of the logistic regression."""
        import numpy as np
        x = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
        out = {k: float(c.predict_proba(x).max(1).mean()) for k, c in self.clfs.items()}
        d2 = ((x[:, None, :] - self.train[None]) ** 2).sum(-1)        # (N, N_train)
        out["nn_dist"] = float(np.sqrt(d2.min(1)).mean())
        pred = self.clfs["logreg"].predict(x)
        out["classes"] = np.bincount(pred, minlength=10).tolist()
        return out


@functools.lru_cache(maxsize=1)
def digits_scorer() -> DigitsScorer:
    """The scorer fitted on the training split (fitted once per process)."""
    return DigitsScorer(*digits_splits()["train"])


def noise_sets(n: int, shape, seed: int) -> dict:
    import torch
    g = torch.Generator().manual_seed(10_000 + seed)
    gauss = torch.randn((n, *shape), generator=g).clamp(-1, 1)
    unif = torch.rand((n, *shape), generator=g) * 2 - 1
    return {SETS[2]: gauss.numpy(), SETS[3]: unif.numpy()}


def train_and_sample(opts: dict, seed: int):
    """One Trainer run of the ddpm preset, then ``samples`` images: (images numpy, summary)."""
    import torch

    from ..config import load_config
    from ..train.run import load_run
    from ..train.trainer import train
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config("ddpm", [
            f"train.steps={opts['steps']}", f"train.batch_size={opts['batch_size']}",
            f"train.lr={opts['lr']}", f"model.extra.timesteps={opts['timesteps']}",
            f"train.seed={seed}", "train.max_minutes=null", "train.eval_every=0",
            "train.ckpt_every=0", "train.plot=false", "train.progress=false",
            f"train.warmup={max(1, opts['steps'] // 10)}", f"train.out_dir={tmp}/run"]
            + ([f"train.threads={opts['threads']}"] if opts.get("threads") else []))
        s = train(cfg)
        model = load_run(s["run_dir"]).model.eval()
        gen = torch.Generator().manual_seed(20_000 + seed)
        x = model.sample(opts["samples"], generator=gen, clip=opts["clip"] or None)
    return x.clamp(-1, 1).float().numpy(), s


def run_diffusion(opts: dict) -> list:
    import time

    from ..train.sweep import paired_difference
    rep = new_report("diffusion", "diffusion", "DDPM on the digits: samples against noise",
                     opts, intro=__doc__.split("\n\n")[1].replace("\n", " "))
    if opts["quick"]:
        rep.notes.append("Smoke test, not a result: the --quick budget trains for a few "
                         "steps with T = 20.")
    deadline = Deadline(opts["max_minutes"])
    splits = digits_splits()
    scorer = digits_scorer()
    real = scorer.score(splits["test"][0])
    per_seed, first = [], None
    for seed in opts["seeds"]:
        if deadline.expired():
            rep.skip(f"seed {seed}", deadline.reason())
            continue
        t0 = time.perf_counter()
        try:
            x, s = train_and_sample(opts, seed)
        except Exception as e:                      # one failing seed keeps the others
            rep.error(f"seed {seed}", e)
            continue
        row = {"seed": seed, "final_val_loss": s.get("final_val_loss"),
               "wall_s": time.perf_counter() - t0, SETS[1]: scorer.score(x)}
        for name, imgs in noise_sets(len(x), x.shape[1:], seed).items():
            row[name] = scorer.score(imgs)
        per_seed.append(row)
        stderr(f"[diffusion] seed {seed}: val loss {row['final_val_loss']:.4f}, "
               f"{row['wall_s']:.0f} s, confidence samples / N(0,I) noise: logreg "
               f"{row[SETS[1]]['logreg']:.3f} / {row[SETS[2]]['logreg']:.3f}, forest "
               f"{row[SETS[1]]['forest']:.3f} / {row[SETS[2]]['forest']:.3f}")
        first = x if first is None else first
    rep.text(f"Budget per seed: {opts['steps']} steps × {opts['batch_size']} images (lr "
             f"{opts['lr']:g}), T = {opts['timesteps']}, {opts['samples']} samples "
             f"(clip {opts['clip'] or 'none'}); seeds {[r['seed'] for r in per_seed]}; "
             f"classifiers fitted on the {len(splits['train'][1])} training digits; real row: "
             f"the {len(splits['test'][1])} test digits (one set, no sd).")
    table = []
    for name in SETS:
        cells = [name]
        for key, _, _ in SCORES:
            if name == SETS[0]:
                cells.append(fmt(real[key], 4))
                continue
            m, sd = mean_sd([r[name][key] for r in per_seed])
            cells.append(f"{fmt(m, 4)} ± {fmt(sd, 3)}")
        table.append(cells)
    rep.table(["images"] + [label for _, label, _ in SCORES], table,
              note="mean ± sd over seeds; confidence = mean max-probability (higher is more "
                   "digit-like); distance in [−1, 1] pixel units over 64 pixels (lower is "
                   "closer to the training data).")
    seeds_table = [[r["seed"], fmt(r["final_val_loss"], 4), f"{r['wall_s']:.0f} s",
                    fmt(r[SETS[1]]["logreg"], 4), fmt(r[SETS[1]]["forest"], 4),
                    " ".join(map(str, r[SETS[1]]["classes"]))] for r in per_seed]
    rep.table(["seed", "final val loss (eq. 14 MSE)", "wall", "samples: logreg conf",
               "samples: forest conf", "samples per predicted class 0..9"], seeds_table,
              heading="Per seed")
    claims, verdicts = [], {}
    for key, label, higher in SCORES:
        for noise in SETS[2:]:
            d = paired_difference([r[SETS[1]][key] for r in per_seed],
                                  [r[noise][key] for r in per_seed])
            better = d["measurable"] and ((d["lo"] > 0) if higher else (d["hi"] < 0))
            worse = d["measurable"] and not better
            verdicts[f"{key} vs {noise}"] = {**d, "samples_better": better}
            word = ("samples beat noise" if better else "noise beats the samples" if worse
                    else "no measurable difference")
            claims.append(f"{label}, samples − {noise}: {d['mean']:+.4f} (95 % t-interval "
                          f"{d['lo']:+.4f} … {d['hi']:+.4f}, {d['n']} seeds): {word}.")
    rep.section("Claim: a trained model's samples beat noise",
                "\n".join(f"- {c}" for c in claims))
    if first is not None:
        rep.figure("samples", f"samples of seed {per_seed[0]['seed']} (top) and held-out "
                              f"test digits (bottom row block)",
                   _grid_draw(first[:40], splits["test"][0][:10]))
    rep.data = {"real": real, "seeds": per_seed, "claims": verdicts}
    return [rep]


def _grid_draw(samples, real, ncol: int = 10):
    """A ``draw(fig)``: rows of ``ncol`` samples (a short last row is left out), a gap, then
    one row of real test digits."""
    def draw(fig):
        import numpy as np
        k = min(ncol, len(samples), len(real))
        tile = (lambda imgs: np.concatenate(list(imgs[:, 0]), 1))              # (8, 8·k)
        rows = [tile(samples[i:i + k]) for i in range(0, len(samples) - k + 1, k)]
        canvas = np.concatenate(rows + [np.full((2, 8 * k), -1.0), tile(real[:k])], 0)
        ax = fig.add_subplot(111)
        ax.imshow(canvas, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
        ax.axis("off")
    return draw


@BENCHMARKS.register(
    "diffusion", paper="Denoising Diffusion Probabilistic Models (Ho et al., 2020)",
    equation="Alg. 2 samples scored by digits classifiers against N(0,I) and uniform noise",
    test="tests/papers/test_models_diffusion.py::test_bench_diffusion_quick_scores_every_set",
    commands=("diffusion",))
class DiffusionStudy(Study):
    """DDPM samples on the digits against noise, by classifier confidence."""

    commands = (Command("diffusion", "DDPM on the digits: samples vs noise by a digits "
                                     "classifier's confidence (mean ± sd over seeds)",
                        OPTIONS, run_diffusion, quick_minutes=5),)
