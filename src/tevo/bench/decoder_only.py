"""The decoder-only study (``tevo bench decoder_only``), after the post "Why are LLMs
decoder-only?" (Su Jianlin, 2023): a bidirectional attention matrix softmax(QKᵀ/√e) comes from
an n×e by e×n product and is close to low-rank when the head dimension e is well below n, while
a causal attention matrix is lower-triangular with a positive diagonal, so its determinant is the
product of that diagonal: its rank is exactly n.

For random queries and keys at several head dimensions, lengths and logit scales, the weights
are computed in float64 (tevo's eager kernel keeps the softmax in float32, too coarse for
singular values) with tevo's causal mask; reported: the numerical rank at relative tolerances
(singular values above τ·σ_max), the effective rank (exp of the entropy of the normalised
singular values, Roy & Vetterli, 2007), and for the causal matrix the exact-rank certificate
(its smallest diagonal entry, > 0).
"""
from __future__ import annotations

import math

from ..registry import BENCHMARKS
from ._common import Command, Deadline, Option, Study, fmt, new_report, sanitize


def attention_weights(q, k, causal: bool):
    """(..., n, n) softmax(q kᵀ/√e) in float64, causal with tevo's mask."""
    import torch

    from ..nn.masks import causal_mask
    q, k = q.double(), k.double()
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        n = q.shape[-2]
        scores = scores.masked_fill(~causal_mask(n, n, q.device), float("-inf"))
    return torch.softmax(scores, -1)


def ranks(w, tols=(1e-3, 1e-6)) -> tuple[list[float], float]:
    """Mean numerical rank at each relative tolerance, and mean effective rank, of a batch of
    square matrices (..., n, n)."""
    import torch
    w = w.double().reshape(-1, w.shape[-2], w.shape[-1])
    s = torch.linalg.svdvals(w)                                   # (m, n), descending
    num = [float((s > s[:, :1] * t).sum(-1).double().mean()) for t in tols]
    p = s / s.sum(-1, keepdim=True)
    ent = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)
    return num, float(torch.exp(ent).mean())


OPTIONS = (
    Option("head_dims", "ints", [4, 8, 16, 32, 64], "head dimensions e", quick=[4, 16, 64]),
    Option("lengths", "ints", [64, 256, 1024], "lengths n", quick=[64, 256]),
    Option("scales", "floats", [1.0, 4.0], "multipliers of q (logit sharpness)"),
    Option("samples", "int", 16, "random (q, k) draws per point", quick=4),
    Option("tolerances", "floats", [1e-3, 1e-6], "relative tolerances of the numerical rank"),
)

_INTRO = """Rank of softmax(q kᵀ/√e) for random q ~ N(0, s²) (s = the scale) and k ~ N(0, 1),
with and without the causal mask, after the post *Why are LLMs decoder-only?*: the causal
matrix is triangular with a positive diagonal, hence exactly full rank (its determinant is the
product of the diagonal); the bidirectional one is close to low-rank when e ≪ n. Computed in
float64; numerical rank = singular values above τ·σ_max. Triangular matrices are
ill-conditioned, so the causal matrix's *numerical* rank can fall below n while its exact rank
is n."""


def run_decoder_only(opts: dict) -> list:
    import torch
    rep = new_report("decoder_only", "decoder_only", "Rank of causal vs bidirectional attention",
                     opts, intro=_INTRO)
    g = torch.Generator().manual_seed(opts["seed"])
    deadline = Deadline(opts["max_minutes"])
    tols = opts["tolerances"]
    rows = []
    for n in sorted(opts["lengths"]):
        for e in sorted(opts["head_dims"]):
            for sc in opts["scales"]:
                if deadline.expired():
                    rep.skip(f"n={n} e={e} scale={sc:g}", deadline.reason())
                    continue
                q = torch.randn(opts["samples"], n, e, generator=g, dtype=torch.float64) * sc
                k = torch.randn(opts["samples"], n, e, generator=g, dtype=torch.float64)
                wc = attention_weights(q, k, causal=True)
                rb, eb = ranks(attention_weights(q, k, causal=False), tols)
                rc, ec = ranks(wc, tols)
                rows.append({"n": n, "head_dim": e, "scale": sc, "tolerances": tols,
                             "bidirectional_rank": rb, "causal_rank": rc,
                             "bidirectional_effective_rank": eb, "causal_effective_rank": ec,
                             "causal_min_diagonal": float(wc.diagonal(dim1=-2, dim2=-1).min())})
    rep.data = sanitize({"rows": rows})
    heads = ["n", "head dim e", "scale"]
    for t in tols:
        heads += [f"rank bidir (τ={t:g})", f"rank causal (τ={t:g})"]
    heads += ["eff. rank bidir", "eff. rank causal", "causal min diagonal (exact rank n if > 0)"]
    table = []
    for r in rows:
        row = [r["n"], r["head_dim"], fmt(r["scale"])]
        for i in range(len(tols)):
            row += [fmt(r["bidirectional_rank"][i], 4), fmt(r["causal_rank"][i], 4)]
        row += [fmt(r["bidirectional_effective_rank"], 4), fmt(r["causal_effective_rank"], 4),
                fmt(r["causal_min_diagonal"], 3)]
        table.append(row)
    rep.table(heads, table, heading="Rank of the attention matrices (means over draws)")

    def draw(fig):
        ax = fig.add_subplot(111)
        for n in sorted({r["n"] for r in rows}):
            for s in sorted({r["scale"] for r in rows}):
                pts = [r for r in rows if r["n"] == n and r["scale"] == s]
                xs = [r["head_dim"] for r in pts]
                ax.plot(xs, [r["bidirectional_rank"][0] / n for r in pts], marker="o",
                        label=f"bidirectional n={n} scale={s:g}")
                ax.plot(xs, [r["causal_rank"][0] / n for r in pts], marker="x", linestyle="--",
                        label=f"causal n={n} scale={s:g}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("head dimension e")
        ax.set_ylabel(f"numerical rank (τ={tols[0]:g}) / n")
        ax.set_ylim(0, 1.05)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    rep.figure("rank", f"numerical rank (τ={tols[0]:g}) / n against head dimension", draw)
    full = all(r["causal_min_diagonal"] > 0 for r in rows)
    rep.notes.append("Every causal matrix has a positive diagonal, hence exact rank n: "
                     f"{'yes' if full else 'no'}.")
    return [rep]


@BENCHMARKS.register(
    "decoder_only", paper="\"Why are LLMs decoder-only?\" (Su Jianlin, 2023, post)",
    equation="rank(softmax(QKᵀ/√e) ⊙ causal) = n (triangular, positive diagonal); "
             "bidirectional: numerically low-rank for e ≪ n",
    test="tests/test_bench.py::test_causal_attention_is_full_rank_and_bidirectional_is_not",
    commands=("decoder_only",))
class DecoderOnlyStudy(Study):
    """Rank of bidirectional vs causal attention matrices."""

    commands = (Command("decoder_only", "rank of bidirectional vs causal attention matrices",
                        OPTIONS, run_decoder_only, quick_minutes=0.5),)
