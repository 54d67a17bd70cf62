"""Length extrapolation, as an evaluation: a trained run's loss and perplexity at 1×, 2×, ...
16× the length it was trained on (the test of ALiBi, Press et al., 2022, §4 and Fig. 1:
"train short, test long"; the KERPLE and RoPE/xPos posts of the survey use the same curve).

The numbers are those of ``tevo eval RUN --lengths ...`` (``tevo.train.evaluate.
evaluate_lengths`` on the run's own data and batch size): each length L is evaluated on
non-overlapping windows of L tokens of the split, ppl(L) = exp(mean token NLL); a length the
model cannot encode at all (past a learned position table) is a row with its error.
Complexity: one evaluation pass per length, O(tokens · model(L)) each.
"""
from __future__ import annotations

from ..errors import ConfigError
from ..registry import INFERENCE


@INFERENCE.register(
    "length_extrapolation",
    paper="Train Short, Test Long: Attention with Linear Biases (Press et al., 2022), §4; the "
          "survey's KERPLE and RoPE length-extrapolation posts",
    equation="ppl(L) = exp(mean_t −log p(x_t | x_{<t} within windows of L)), L = f × L_train",
    complexity=("one eval pass per length", "model at length L"),
    test="tests/papers/test_inference_length_extrapolation.py::test_registered_evaluation_gives_"
         "the_numbers_of_tevo_eval_lengths")
def length_extrapolation(run_dir, lengths=None, factors=(1, 2, 4, 8, 16), split: str = "val",
                         max_batches: int | None = None, device: str = "cpu",
                         checkpoint=None) -> dict:
    """Evaluate the run in ``run_dir`` at ``lengths`` (token counts) or, when None, at
    ``factors`` × its training length (data.seq_len). Returns {"train_length": L, "rows":
    [{"length", "factor", "loss", "perplexity", "bits_per_char", ... or "error"}]}."""
    from ..train.evaluate import evaluate_lengths      # the evaluation `tevo eval` runs
    from ..train.run import load_run
    if lengths is None:
        fs = list(factors or ())
        if not fs or any(isinstance(f, bool) or not isinstance(f, (int, float)) or f <= 0
                         for f in fs):
            raise ConfigError("length_extrapolation.factors", factors,
                              why="must be a non-empty list of numbers > 0")
    run = load_run(run_dir, device, checkpoint)
    L = int(run.data.seq_len)
    if lengths is None:
        lengths = [max(2, int(round(f * L))) for f in fs]
    tc = run.cfg.train
    bs = max(1, tc.batch_size // tc.grad_accum)
    rows = evaluate_lengths(run.model, run.objective, run.data, [int(n) for n in lengths],
                            split, bs * L, max_batches, run.device, tc.precision)
    for r in rows:
        r["factor"] = r["length"] / L
    return {"train_length": L, "split": split, "step": run.step, "rows": rows}
