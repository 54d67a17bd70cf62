"""`tevo bench memory`: the recall-across-segments task puts the pairs D segments before their
queries, the study trains every variant at one budget, scores bits per character with each
memory on vs off through the Trainer, and writes its page."""
import torch

import tevo
from tevo.bench.memory import RecallAcrossSegments, _bpc_claims, _claims, _logits


def test_task_places_the_pairs_d_segments_before_the_queries():
    task = RecallAcrossSegments(S=8, D=2, pairs=2, keys=6, values=5)
    ids, pos = task.sample(16, torch.Generator().manual_seed(0))
    assert ids.shape == (16, 24) and pos.tolist() == [16, 18]
    for row in ids:
        pairs = {int(row[2 * i]): int(row[2 * i + 1]) for i in range(2)}
        asked = {int(row[p]): int(row[p + 1]) for p in pos}
        assert asked == pairs                                      # the same pairs, reordered
        assert all(0 <= k < 6 for k in pairs) and all(6 <= v < 11 for v in pairs.values())
        assert bool((row[4:16] >= 11).all())                       # filler in between


def test_encoder_variant_never_sees_the_answers():
    """memory_tokens is bidirectional: the answers must be masked in its input, or it could
    read them instead of recalling them."""
    task = RecallAcrossSegments(S=8, D=1, pairs=2, keys=6, values=5)
    ids, pos = task.sample(4, torch.Generator().manual_seed(0))
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return type("O", (), {"logits": torch.zeros(*x.shape, 20)})()

    logits, aux, at = _logits(Spy(), ids, "memory_tokens", 8, pos, mask_id=19)
    x = torch.cat(seen, 1)
    assert at.tolist() == (pos + 1).tolist() and logits.shape[1] == ids.shape[1]
    assert bool((x[:, pos + 1] == 19).all())                       # answers hidden
    keep = torch.ones(ids.shape[1], dtype=torch.bool)
    keep[pos + 1] = False
    assert torch.equal(x[:, keep], ids[:, keep])                   # nothing else changed
    assert all(s.shape[1] == 8 for s in seen)                      # one segment at a time


def test_claims_follow_the_numbers():
    """The verdicts are computed, not written: a flat xl_memory is not 'reproduced', an interval
    containing zero reads 'no measurable difference'."""
    opts = {"n_layers": 2, "segment": 8}
    cell = lambda a: {"mean": a, "sd": 0.0, "runs": []}             # noqa: E731
    good = {"none": {c: cell(0.12) for c in "124"},
            "xl_memory": {"1": cell(0.9), "2": cell(0.8), "4": cell(0.13)}}
    text = _claims(good, ["1", "2", "4"], 0.125, opts)
    assert "Transformer-XL (§3.2)" in text and ": reproduced" in text and ": yes." in text
    flat = {"none": good["none"], "xl_memory": {c: cell(0.13) for c in "124"}}
    text = _claims(flat, ["1", "2", "4"], 0.125, opts)
    assert "not reproduced at this budget" in text and "does NOT learn" in text
    diffs = {"xl_memory": {"mean": -0.01, "lo": -0.03, "hi": 0.01, "n": 3, "measurable": False},
             "rmt": {"mean": -0.05, "lo": -0.08, "hi": -0.02, "n": 3, "measurable": True}}
    text = _bpc_claims(diffs, ["xl_memory", "rmt"]).splitlines()
    assert "no measurable difference" in text[0] and "reproduced: the memory lowers" in text[1]


def test_memory_study_runs_every_variant_and_writes_its_page(tmp_path):
    (rep,) = tevo.bench.run("memory", memories=["none", "xl_memory", "rmt", "memory_tokens"],
                            distances=[1], seeds=2, segment=4, pairs=1, keys=4, values=4,
                            steps=2, batch=4, d_model=16, eval_examples=8,
                            bpc_memories=["xl_memory", "memory_tokens"], bpc_steps=2,
                            bpc_seq_len=8, bpc_batch=2, bpc_d_model=16, bpc_eval_batches=2,
                            threads=1, work_dir=str(tmp_path / "runs"), out=str(tmp_path))
    res = rep.data["results"]
    assert set(res) == {"none", "xl_memory", "rmt", "memory_tokens"}
    for r in res.values():
        cell = r["1"]
        assert len(cell["runs"]) == 2 and 0.0 <= cell["mean"] <= 1.0
    bpc = rep.data["bits_per_char"]
    assert set(bpc) == {"none", "xl_memory"} and all(len(v) == 2 for v in bpc.values())
    assert (tmp_path / "runs" / "xl_memory-s0" / "config.yaml").exists()   # a Trainer run
    d = rep.data["bits_per_char_differences"]["xl_memory"]
    assert d["n"] == 2 and d["lo"] <= d["mean"] <= d["hi"]
    assert any(s["item"].startswith("memory_tokens (bits") for s in rep.skipped)
    assert not rep.errors
    page = (tmp_path / "memory.md").read_text()
    assert "Accuracy per distance" in page and "Paper claims" in page
    assert "Bits per character on the held-out works" in page
