"""The symmetry study (``tevo bench symmetry``): permutation equivariance across mixers, after
"Why self-attention is natural for sequence-to-sequence problems? A perspective from
symmetries" (Wang et al., 2022). Without position information, self-attention is permutation
equivariant, f(Px) = P f(x), and its causal form makes the last output a function of the *set*
of earlier tokens; mixers with built-in order (windows, convolutions, recurrences, Fourier
transforms, fixed token-mixing matrices) are not. Every registered mixer is checked, in each
form it has, with no position encoding:

- bidirectional: ‖f(Px) − P f(x)‖∞ / ‖f(x)‖∞ for a random permutation P;
- causal: the change of the last output when the tokens before it are permuted.

The same checks on a whole causal NoPE language model show that stacking causal layers breaks
the prefix symmetry (the mask itself carries order; Haviv et al., 2022).
"""
from __future__ import annotations

from ..registry import BENCHMARKS, MIXERS
from ._common import Command, Deadline, Option, Study, fmt, new_report, sanitize


def equivariance_error(fn, x, perm) -> float:
    """‖f(x[:, perm]) − f(x)[:, perm]‖∞ / ‖f(x)‖∞."""
    y = fn(x)
    yp = fn(x[:, perm])
    return float((yp - y[:, perm]).abs().max() / y.abs().max().clamp_min(1e-12))


def prefix_invariance_error(fn, x, perm_prefix) -> float:
    """Change of the last output when the tokens before it are permuted (relative)."""
    n = x.shape[1]
    order = list(perm_prefix) + [n - 1]
    y = fn(x)[:, -1]
    yp = fn(x[:, order])[:, -1]
    return float((yp - y).abs().max() / y.abs().max().clamp_min(1e-12))


def mixer_fn(name: str, causal: bool, d: int, n: int, seed: int, dtype=None):
    import torch

    from ..nn.context import MixerContext
    torch.manual_seed(seed)
    e = MIXERS.get(name)
    m = MIXERS.build({"name": name, **e.tiny}, d_model=d, max_len=n, causal=causal, layer=0,
                     n_layers=1, dropout=0.0).to(dtype or torch.float64).eval()

    def fn(x):
        with torch.no_grad():
            pos = torch.arange(x.shape[1]).unsqueeze(0).expand(x.shape[0], -1)
            return m(x, MixerContext(causal=causal, positions=pos))[0]
    return fn


OPTIONS = (
    Option("mixers", "strs", None, "mixers (default: every registered mixer)"),
    Option("d_model", "int", 16, "width"),
    Option("length", "int", 16, "sequence length"),
    Option("trials", "int", 3, "random permutations (the largest error is kept)"),
    Option("tolerance", "float", 1e-6, "relative error below which a symmetry holds"),
)

_INTRO = """Each mixer from its registry `tiny` options in float64 (d = {d}, n = {n}, batch 2),
with no position encoding. *Equivariant*: f(Px) = P f(x) for random permutations P
(bidirectional form). *Prefix-invariant*: the last output is unchanged when the tokens before
it are permuted (causal form). A symmetry holds when the relative error is below {tol:g}."""


def run_symmetry(opts: dict) -> list:
    import torch
    d, n = opts["d_model"], opts["length"]
    rep = new_report("symmetry", "symmetry", "Permutation symmetry of every mixer", opts,
                     intro=_INTRO.format(d=d, n=n, tol=opts["tolerance"]))
    names = list(opts["mixers"] or MIXERS.names())
    g = torch.Generator().manual_seed(opts["seed"])
    deadline = Deadline(opts["max_minutes"])
    tol = opts["tolerance"]
    rows = {}
    for name in names:
        if name not in MIXERS:
            rep.skip(name, "not a registered mixer")
            continue
        if deadline.expired():
            rep.skip(name, deadline.reason())
            continue
        s = MIXERS.get(name).supports
        r = {}
        for causal, ok in ((False, s is None or s.bidirectional), (True, s is None or s.causal)):
            key = "causal" if causal else "bidirectional"
            if not ok:
                r[key] = None
                continue
            # float64 first; mixers that keep float32 internals are checked in float32
            for dtype, tol_dt in ((torch.float64, tol), (torch.float32, max(tol, 1e-4))):
                try:
                    fn = mixer_fn(name, causal, d, n, opts["seed"], dtype)
                    errs = []
                    for _ in range(opts["trials"]):
                        x = torch.randn(2, n, d, generator=g, dtype=torch.float64).to(dtype)
                        if causal:
                            errs.append(prefix_invariance_error(
                                fn, x, torch.randperm(n - 1, generator=g).tolist()))
                        else:
                            errs.append(equivariance_error(fn, x,
                                                           torch.randperm(n, generator=g)))
                    r[key] = max(errs)
                    r[key + "_dtype"] = str(dtype).replace("torch.", "")
                    r[key + "_tolerance"] = tol_dt
                    break
                except Exception as e:
                    if dtype == torch.float32:
                        rep.error(f"{name} ({key})", e)
                        r[key] = float("nan")
        rows[name] = r
    lm = _nope_lm(opts, g) if not deadline.expired() else {}
    rep.data = sanitize({"mixers": rows, "nope_lm": lm, "tolerance": tol})

    def verdict(r, key):
        v = r.get(key)
        if v is None:
            return "— (no such form)"
        if v != v:
            return "error"
        t = r.get(key + "_tolerance", tol)
        f32 = ", float32" if r.get(key + "_dtype") == "float32" else ""
        return f"{'yes' if v < t else 'no'} ({v:.1e}{f32})"
    rep.table(["mixer", "equivariant (bidirectional)", "prefix-invariant (causal)"],
              [[k, verdict(v, "bidirectional"), verdict(v, "causal")] for k, v in rows.items()],
              heading="Mixers (relative error in brackets)",
              note="Checked in float64; mixers with float32 internals in float32 (marked), "
                   "where a symmetry holds below 1e-4.")
    if lm:
        rep.table(["causal NoPE language model", "last-token logits change under a prefix "
                   "permutation", "prefix-invariant"],
                  [[f"{k} layer(s)", fmt(v, 3), "yes" if v < tol else "no"]
                   for k, v in lm.items()],
                  heading="Whole models: stacked causal layers carry order",
                  note="One causal softmax layer without positions sees its prefix as a set; "
                       "from two layers on, earlier outputs differ by how many tokens they saw, "
                       "so order leaks through the mask (Haviv et al., 2022).")
    n_eq = sum(1 for v in rows.values() if v.get("bidirectional") is not None
               and v["bidirectional"] < v.get("bidirectional_tolerance", tol))
    n_bi = sum(1 for v in rows.values() if v.get("bidirectional") is not None)
    rep.notes.append(f"{n_eq} of {n_bi} bidirectional mixers are permutation equivariant.")
    return [rep]


def _nope_lm(opts, g) -> dict:
    """Relative change of the last logits of a causal LM without positions, 1 and 2 layers."""
    import torch

    import tevo
    if "softmax" not in MIXERS:
        return {}
    out = {}
    n = opts["length"]
    for layers in (1, 2):
        torch.manual_seed(opts["seed"])
        model = tevo.build_model({"arch": "gpt", "vocab_size": 64, "d_model": opts["d_model"],
                                  "n_layers": layers, "max_len": n, "position": "none",
                                  "mixer": {"name": "softmax", "heads": 2}}).double().eval()
        ids = torch.randint(0, 64, (2, n), generator=g)
        perm = torch.randperm(n - 1, generator=g).tolist() + [n - 1]
        with torch.no_grad():
            a = model(ids).logits[:, -1]
            b = model(ids[:, perm]).logits[:, -1]
        out[str(layers)] = float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))
    return out


@BENCHMARKS.register(
    "symmetry",
    paper="Why self-attention is natural for sequence-to-sequence problems? A perspective from "
          "symmetries (Wang et al., 2022)",
    equation="f(Px) = P f(x) without positions; causal: y_n depends on the set {x_1..x_{n-1}}",
    test="tests/test_bench.py::test_softmax_is_permutation_equivariant_and_nope_lm_is_not",
    commands=("symmetry",))
class SymmetryStudy(Study):
    """Permutation equivariance (and causal prefix invariance) of every mixer."""

    commands = (Command("symmetry", "permutation equivariance checks across mixers", OPTIONS,
                        run_symmetry, quick_minutes=0.5),)
