"""`tevo bench memory`: the recall-across-segments task puts the pairs D segments before their
queries, and the study trains every variant at one budget and writes its page."""
import torch

import tevo
from tevo.bench.memory import RecallAcrossSegments


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


def test_memory_study_runs_every_variant_and_writes_its_page(tmp_path):
    (rep,) = tevo.bench.run("memory", memories=["none", "xl_memory", "rmt", "memory_tokens"],
                            distances=[1], seeds=2, segment=4, pairs=1, keys=4, values=4,
                            steps=2, batch=4, d_model=16, eval_examples=8, out=str(tmp_path))
    res = rep.data["results"]
    assert set(res) == {"none", "xl_memory", "rmt"}
    for r in res.values():
        cell = r["1"]
        assert len(cell["runs"]) == 2 and 0.0 <= cell["mean"] <= 1.0
    assert any(s["item"] == "memory_tokens" for s in rep.skipped)
    page = (tmp_path / "memory.md").read_text()
    assert "Accuracy per distance" in page and "Paper claims" in page
