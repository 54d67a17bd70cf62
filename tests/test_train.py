"""Trainer: exact resume (stopped, and by SIGINT), checkpoint round trip, atomic keep-last-N,
NaN detection, accumulation, weight-decay groups, schedules, DDP and FSDP equal one process."""
from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

import tevo
from tevo import cli
from tevo.config import load_config
from tevo.errors import ConfigError
from tevo.data.corpora import ShakespeareCorpus
from tevo.train.checkpoint import STATE, WEIGHTS, latest_checkpoint, list_checkpoints
from tevo.train.log import read_metrics
from tevo.train.optim import Schedule, param_groups
from tevo.train.run import load_run
from tevo.train.trainer import Trainer, TrainingDiverged, new_run_dir, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    p = tmp_path_factory.mktemp("corpus") / "shakespeare_part.txt"
    p.write_text(ShakespeareCorpus().splits()["train"][:60_000])
    return p


def tiny(corpus, out, *extra) -> list[str]:
    """Overrides of the default preset (what `tevo train` without a config uses) for a tiny,
    fast, deterministic run: fp32, one thread, no time budget."""
    return [f"data.path={corpus}", "data.seq_len=32", "model.d_model=32", "model.n_layers=2",
            "model.max_len=32", "model.mixer={name: softmax, heads: 2}", "train.batch_size=8",
            "train.steps=16",
            "train.warmup=4", "train.lr=3e-3", "train.log_every=1", "train.eval_every=8",
            "train.eval_batches=2", "train.ckpt_every=0", "train.final_eval_batches=4",
            "train.sample_tokens=0", "train.progress=false", "train.plot=false",
            "train.max_minutes=null", "train.precision=fp32", "train.threads=1",
            f"train.out_dir={out}", *extra]


def losses(run_dir, split="train") -> dict:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r.get("split") == split}


@contextmanager
def threads(n):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def assert_same_run(full: Path, part: Path, steps: int = 16) -> None:
    """The resumed run logged the same losses as the uninterrupted one, at every step."""
    a, b = losses(full), losses(part)
    assert sorted(a) == list(range(1, steps + 1)) and a == b      # identical at every step
    assert losses(full, "val") == losses(part, "val")
    sa = json.loads((full / "summary.json").read_text())
    sb = json.loads((part / "summary.json").read_text())
    assert sa["final_val_loss"] == sb["final_val_loss"] and sb["steps"] == steps


def test_exact_resume_matches_an_uninterrupted_run(corpus, tmp_path):
    ov = ["model.dropout=0.1"]                    # dropout: the RNG state must resume too
    train(load_config("default", tiny(corpus, tmp_path / "full", *ov)))
    stop = train(load_config("default", tiny(corpus, tmp_path / "part", *ov)), stop_at=8)
    assert stop["stopped"] == "stop_at" and stop["step"] == 8
    assert [p.name for p in list_checkpoints(tmp_path / "part")] == ["step_00000008"]
    assert cli.main(["train", "--resume", str(tmp_path / "part")]) == 0
    assert_same_run(tmp_path / "full", tmp_path / "part")


def test_sigint_saves_a_checkpoint_and_the_resumed_run_matches(corpus, tmp_path):
    ov = ["train.steps=300", "model.n_layers=1", "model.d_model=16", "data.seq_len=16",
          "model.max_len=16", "train.batch_size=4", "train.eval_every=0",
          "train.final_eval_batches=2"]
    run = tmp_path / "interrupted"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
           "PYTHONPATH": str(ROOT / "src")}
    p = subprocess.Popen([sys.executable, "-m", "tevo", "train", *tiny(corpus, run, *ov)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not losses(run) and p.poll() is None and time.time() - t0 < 120:
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-2000:]                      # as shells expect of Ctrl-C
    assert "stopped at step" in out, out + err
    ck = latest_checkpoint(run)
    k = int(ck.name.split("_")[1])
    assert 0 < k < 300 and not (run / "summary.json").exists()
    assert not list((run / "checkpoints").glob(".tmp*"))
    with threads(1):
        assert cli.main(["train", "--resume", str(run)]) == 0
        train(load_config("default", tiny(corpus, tmp_path / "ref", *ov)))
    a, b = losses(tmp_path / "ref"), losses(run)
    assert sorted(b) == list(range(1, 301)) and a == b


def test_checkpoint_round_trip_gives_identical_logits_and_safe_state(corpus, tmp_path):
    tr = Trainer(load_config("default", tiny(corpus, tmp_path / "r", "train.ckpt_every=4",
                                        "train.keep_last=2", "train.eval_every=0")))
    tr.fit()
    assert [p.name for p in list_checkpoints(tr.run_dir)] == ["step_00000012", "step_00000016"]
    assert not list((tr.run_dir / "checkpoints").glob(".tmp*"))
    run = load_run(tr.run_dir)
    ids = torch.randint(0, run.cfg.model.vocab_size, (2, 32))
    tr.model.eval()
    assert torch.equal(tr.model(ids).logits, run.model(ids).logits)
    st = torch.load(run.checkpoint / STATE, weights_only=True)       # no pickled code needed
    assert st["step"] == 16 and "sampler" in st["data"] and "torch" in st["rng"][0]
    for f in ("config.yaml", "metrics.jsonl", "summary.json"):
        assert (tr.run_dir / f).exists()
    s = json.loads((tr.run_dir / "summary.json").read_text())
    for k in ("final_val_loss", "val_bits_per_char", "tokens_per_second", "params",
              "wall_seconds"):
        assert isinstance(s[k], (int, float)), k
    assert s["params"] == sum(p.numel() for p in tr.model.parameters())


def test_nan_is_detected_early_with_a_clear_message(corpus, tmp_path):
    tr = Trainer(load_config("default", tiny(corpus, tmp_path / "nan")))
    real = tr.objective

    class Poisoned:
        def __getattr__(self, name):
            return getattr(real, name)

        def __call__(self, model, batch):
            loss, m = real(model, batch)
            return (loss * float("nan") if tr.step >= 2 else loss), m
    tr.objective = Poisoned()
    with pytest.raises(TrainingDiverged, match=r"diverged at step 3: .*lower train.lr"):
        tr.fit()


def test_gradient_accumulation_matches_one_big_batch(corpus, tmp_path):
    ov = ["train.steps=4", "train.eval_every=0"]
    train(load_config("default", tiny(corpus, tmp_path / "one", *ov)))
    train(load_config("default", tiny(corpus, tmp_path / "acc", *ov, "train.grad_accum=2")))
    a, b = losses(tmp_path / "one"), losses(tmp_path / "acc")
    assert sorted(a) == sorted(b)
    for s in a:
        assert abs(a[s] - b[s]) < 1e-4, (s, a[s], b[s])


def test_no_weight_decay_on_norms_biases_and_embeddings():
    model = tevo.build_model("gpt2", n_layers=2, d_model=16, vocab_size=30, max_len=16,
                             mixer={"name": "softmax", "heads": 2})
    names = {id(p): n for n, p in model.named_parameters()}
    decay, keep = param_groups(model, 0.1)
    dn = {names[id(p)] for p in decay["params"]}
    assert dn and all(n.endswith("weight") and "norm" not in n and "embed" not in n
                      and "pos" not in n for n in dn)
    assert len(decay["params"]) + len(keep["params"]) == len(list(model.parameters()))
    assert decay["weight_decay"] == 0.1 and keep["weight_decay"] == 0.0
    decay2, _ = param_groups(model, 0.1, ["bias", "norm"])
    assert "embed.weight" in {names[id(p)] for p in decay2["params"]}


def test_schedules():
    s = Schedule(1.0, steps=110, warmup=10, kind="cosine", min_lr_ratio=0.1)
    assert s(0) == pytest.approx(0.1) and s(9) == pytest.approx(1.0)
    assert s(10) == pytest.approx(1.0) and s(60) == pytest.approx(0.55)
    assert s(110) == pytest.approx(0.1)
    lin = Schedule(1.0, steps=110, warmup=10, kind="linear", min_lr_ratio=0.0)
    assert lin(60) == pytest.approx(0.5)
    assert Schedule(2.0, 100, 0, "constant")(77) == 2.0
    timed = Schedule(1.0, steps=1000, warmup=0, kind="linear", min_lr_ratio=0.0, max_seconds=10)
    assert timed(10, elapsed=5.0) == pytest.approx(0.5)          # time is further along


def test_bf16_autocast_and_other_objectives_train(corpus, tmp_path):
    s = train(load_config("default", tiny(corpus, tmp_path / "bf16", "train.precision=bf16",
                                     "train.steps=4", "train.eval_every=0")))
    assert s["precision"] == "bf16" and s["final_val_loss"] < 6
    bert = train(load_config("default", [
        "model.arch=bert", "model.n_segments=2", "objective.name=mlm", "objective.nsp=true",
        *tiny(corpus, tmp_path / "bert", "train.steps=4", "train.eval_every=0")]))
    assert "val_accuracy" in bert and "val_bits_per_char" not in bert
    s2s = train(load_config("default", [
        "model.arch=transformer", "objective=seq2seq", "data.task={name: reverse, vocab: 8, "
        "length: 6}", *tiny(corpus, tmp_path / "s2s", "train.steps=6", "train.eval_every=0")]))
    assert 0 <= s2s["val_exact_match"] <= 1
    mqar = train(load_config("default", [
        "data.task={name: mqar, vocab: 32, seq_len: 24, num_kv_pairs: 4}",
        *tiny(corpus, tmp_path / "mqar", "train.steps=4", "train.eval_every=0")]))
    assert "val_accuracy" in mqar and mqar["params"] > 0


def test_new_run_dirs_do_not_overwrite(tmp_path):
    assert new_run_dir(tmp_path / "x") == tmp_path / "x"
    (tmp_path / "x").mkdir()
    assert new_run_dir(tmp_path / "x") == tmp_path / "x"          # empty: reused
    (tmp_path / "x" / "f").write_text("1")
    assert new_run_dir(tmp_path / "x") == tmp_path / "x-2"


def test_a_micro_batch_split_moves_weights_only_by_rounding(corpus, tmp_path):
    """The same batch in 2 or 4 micro-batches: gradients equal up to summation-order rounding
    δg. Adam normalises each update by √v + ε, so δg moves a weight by up to lr·δg/ε: at the
    default ε = 1e-8 the 4-step weights differ by ~3e-5 (measured), at ε = 1e-6 by ~3e-7 —
    the bound that the DDP/FSDP weight comparisons rely on, whatever the CPU's fp32 kernels."""
    def weights(accum, eps):
        ov = ["train.steps=4", "train.eval_every=0", "train.batch_size=4", "train.grad_clip=0.05",
              f"train.grad_accum={accum}", f"train.adam_eps={eps}", "train.final_eval_batches=1"]
        with threads(1):
            tr = Trainer(load_config("default", tiny(corpus, tmp_path / f"{accum}-{eps}", *ov)))
            tr.fit()
        return {k: v.detach().clone() for k, v in tr.model.state_dict().items()}

    def gap(eps):
        a, b = weights(2, eps), weights(4, eps)
        assert sorted(a) == sorted(b)
        return max((a[k] - b[k]).abs().max().item() for k in a)

    assert gap(1e-6) < 3e-6
    with pytest.raises(ConfigError, match="train.adam_eps"):
        load_config("default", tiny(corpus, tmp_path / "bad", "train.adam_eps=0"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_train(*args, nproc: int = 2) -> None:
    """``torchrun --nproc_per_node N -m tevo train ARGS`` on CPU; a port taken between picking
    it and binding it (another job on the machine) gets one retry on a fresh port."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
           "PYTHONPATH": str(ROOT / "src")}
    for attempt in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
               f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", "-m", "tevo", "train", *args]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        out = p.stdout + p.stderr
        if p.returncode == 0 or attempt or "address already in use" not in out.lower():
            break
    assert p.returncode == 0, out[-3000:]


def test_ddp_two_cpu_processes_match_one_process(corpus, tmp_path):
    ov = ["train.steps=4", "train.eval_every=2", "train.eval_batches=2"]
    torchrun_train(*tiny(corpus, tmp_path / "ddp", *ov))
    with threads(1):
        train(load_config("default", tiny(corpus, tmp_path / "single", *ov)))
    a, b = losses(tmp_path / "single"), losses(tmp_path / "ddp")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for s in a:
        assert abs(a[s] - b[s]) < 1e-4, (s, a[s], b[s])
    va, vb = losses(tmp_path / "single", "val"), losses(tmp_path / "ddp", "val")
    assert sorted(va) == sorted(vb) and all(abs(va[s] - vb[s]) < 1e-4 for s in va)
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2


def test_fsdp_two_cpu_processes_match_one_process_and_save_its_checkpoints(corpus, tmp_path):
    """train.distributed=fsdp under torchrun (FSDP2, gloo): the losses of one process (two
    micro-batches, clipping active, a whole-split evaluation with 48 + 47 batches, a sample),
    checkpoints in the single-process format (same keys and optimiser state layout, loaded and
    resumed by one process), and an FSDP resume that continues exactly. Tolerance 1e-4 as for
    DDP: the gradient reduce-scatter sums in another order (measured differences ~1e-8).
    fp32 with AdamW's ε at 1e-6: two processes split the batch, so the gradients differ by
    summation-order rounding δg, and Adam moves a weight by up to lr·δg/ε per step more; at the
    default ε = 1e-8 that reaches 3e-5 after 4 steps on some CPUs' kernels (see
    test_a_micro_batch_split_moves_weights_only_by_rounding), at 1e-6 it stays ~3e-7, so the
    1e-5 weight comparison checks the sharding and the checkpoint layout, not the BLAS."""
    from safetensors.torch import load_file
    ov = ["train.steps=4", "train.eval_every=2", "train.eval_batches=2", "train.batch_size=4",
          "train.grad_accum=2", "train.grad_clip=0.05", "train.ckpt_every=2",
          "train.final_eval_batches=null", "train.sample_tokens=8", "train.adam_eps=1e-6"]
    torchrun = torchrun_train
    fsdp, one = tmp_path / "fsdp", tmp_path / "single"
    torchrun(*tiny(corpus, fsdp, *ov, "train.distributed=fsdp"))
    with threads(1):
        tr = Trainer(load_config("default", tiny(corpus, one, *ov)))
        tr.fit()
    a, b = losses(one), losses(fsdp)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    assert all(abs(a[s] - b[s]) < 1e-4 for s in a), (a, b)
    va, vb = losses(one, "val"), losses(fsdp, "val")
    assert sorted(va) == sorted(vb) == [2, 4] and all(abs(va[s] - vb[s]) < 1e-4 for s in va)
    sa, sb = (json.loads((r / "summary.json").read_text()) for r in (one, fsdp))
    assert sb["world_size"] == 2 and sb["val_tokens"] == sa["val_tokens"]
    assert abs(sa["final_val_loss"] - sb["final_val_loss"]) < 1e-4
    assert sb["sample"] == sa["sample"] and sb["params"] == sa["params"]
    for ck in ("step_00000002", "step_00000004"):
        wa, wb = (load_file(str(r / "checkpoints" / ck / WEIGHTS)) for r in (one, fsdp))
        assert sorted(wa) == sorted(wb)                  # full tensors, ties kept once
        assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
        oa, ob = (torch.load(r / "checkpoints" / ck / STATE, weights_only=True)["optimizer"]
                  for r in (one, fsdp))
        assert oa["param_groups"] == ob["param_groups"]
        assert sorted(oa["state"]) == sorted(ob["state"])
    ids = torch.randint(0, tr.cfg.model.vocab_size, (2, 32))
    tr.model.eval()
    assert torch.allclose(load_run(fsdp).model(ids).logits, tr.model(ids).logits, atol=1e-4)
    for name in ("fsdp_resumed", "single_resumed"):         # stopped at step 2
        shutil.copytree(fsdp, tmp_path / name)
        shutil.rmtree(tmp_path / name / "checkpoints" / "step_00000004")
        (tmp_path / name / "summary.json").unlink()
    torchrun("--resume", str(tmp_path / "fsdp_resumed"))
    assert losses(tmp_path / "fsdp_resumed") == b                 # FSDP resumes exactly
    assert losses(tmp_path / "fsdp_resumed", "val") == vb
    with threads(1):
        assert cli.main(["train", "--resume", str(tmp_path / "single_resumed")]) == 0
    c = losses(tmp_path / "single_resumed")
    assert sorted(c) == [1, 2, 3, 4] and all(abs(c[s] - a[s]) < 1e-4 for s in a)


@pytest.mark.filterwarnings("ignore:FSDP2-wrapped module")       # logits: a view, not modified
def test_fsdp_units_keep_what_blocks_write_into_their_context(tmp_path):
    """FSDP2 hands each block a copy of a MixerContext holding tensors that need grad; what a
    block writes there (MoE balance losses, RealFormer scores carried to the next layer) still
    reaches the model: the same outputs, auxiliary loss and gradients as the unsharded model."""
    import torch.distributed as dist
    from tevo.train import fsdp
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0,
                            world_size=1)
    try:
        torch.manual_seed(0)
        model = tevo.build_model("gpt2", n_layers=3, d_model=16, vocab_size=40, max_len=16,
                                 dropout=0.0, mixer={"name": "realformer", "heads": 2},
                                 ffn={"name": "moe", "experts": 4})
        plain = copy.deepcopy(model)
        fsdp.shard(model, torch.device("cpu"), 1)
        ids = torch.randint(0, 40, (2, 16))
        a, b = plain(ids), model(ids)
        assert a.aux_loss.item() > 0 and torch.equal(a.aux_loss, b.aux_loss)
        assert torch.equal(a.logits, b.logits)
        for out in (a, b):
            (out.logits.square().mean() + out.aux_loss).backward()
        sharded = dict(model.named_parameters())
        for n, p in plain.named_parameters():
            assert torch.allclose(p.grad, sharded[n].grad.full_tensor(), atol=1e-7), n
    finally:
        dist.destroy_process_group()


def test_tensorboard_is_optional(corpus, tmp_path):
    import importlib.util
    cfg = load_config("default", tiny(corpus, tmp_path / "tb", "train.tensorboard=true",
                                 "train.steps=2", "train.eval_every=0"))
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(tevo.ConfigError, match="pip install tensorboard"):
            train(cfg)
    else:
        train(cfg)
        assert list((tmp_path / "tb" / "tensorboard").iterdir())


def test_bpe_bits_per_character_use_the_split_characters_per_token(corpus, tmp_path):
    s = train(load_config("default", tiny(corpus, tmp_path / "bpe", "data.tokenizer=bpe",
                                          "data.vocab_size=400", "train.steps=3",
                                          "train.eval_every=0", "train.final_eval_batches=null")))
    meta = json.loads((tmp_path / "bpe" / "data" / "meta.json").read_text())["splits"]["val"]
    assert meta["chars"] > 1.5 * meta["tokens"]                    # merges: > 1.5 chars/token
    bits_per_token = s["final_val_loss"] / 0.6931471805599453
    assert s["val_bits_per_char"] == pytest.approx(bits_per_token * meta["tokens"] / meta["chars"])
    assert (tmp_path / "bpe" / "tokenizer.json").exists() and s["val_tokens"] > 0


def test_pkm_values_train_with_their_own_sparse_adam_and_resume_exactly(corpus, tmp_path):
    """Product-key memory values (Lample et al., 2019, §4.2): their own learning rate (a scale
    of the schedule) and SparseAdam beside AdamW; only the rows a step read move; clipping
    counts sparse gradients; stop + resume gives identical losses."""
    from tevo.ffn.pkm import ProductKeyMemory
    from tevo.train.optim import CombinedOptimizer, build_optimizer, clip_gradients
    pkm = ("model.ffn={name: pkm, n_keys: 8, heads: 2, k_dim: 8, topk: 2, sparse: true, "
           "values_lr: 6e-3}")
    cfg = load_config("default", tiny(corpus, tmp_path / "x", pkm))
    model = tevo.build_model(cfg.model)
    mems = [m for m in model.modules() if isinstance(m, ProductKeyMemory)]
    assert len(mems) == 2
    opt = build_optimizer(model, cfg.train)
    assert isinstance(opt, CombinedOptimizer)
    adamw, sparse = opt.optimizers
    assert isinstance(sparse, torch.optim.SparseAdam)
    values = {id(m.values.weight) for m in mems}
    assert {id(p) for g in sparse.param_groups for p in g["params"]} == values
    assert not values & {id(p) for g in adamw.param_groups for p in g["params"]}
    assert all(g["lr_scale"] == pytest.approx(2.0) for g in sparse.param_groups)   # 6e-3/3e-3
    # one step: untouched value rows stay exactly as they were
    ids = torch.randint(0, 256, (2, 16))
    before = [m.values.weight.detach().clone() for m in mems]
    model(ids).logits.float().logsumexp(-1).mean().backward()
    grads = [m.values.weight.grad for m in mems]
    assert all(g.is_sparse for g in grads)
    dense_norm = torch.sqrt(sum(p.grad.to_dense().pow(2).sum() for p in model.parameters()
                                if p.grad is not None))
    cap = float(dense_norm) / 4
    norm = clip_gradients(model.parameters(), cap)
    torch.testing.assert_close(norm, dense_norm)
    after_clip = torch.sqrt(sum(p.grad.to_dense().pow(2).sum() for p in model.parameters()
                                if p.grad is not None))
    torch.testing.assert_close(after_clip, torch.tensor(cap), atol=1e-5, rtol=1e-4)
    touched = [g.coalesce().indices()[0].unique() for g in grads]
    opt.step()
    for w0, m, rows in zip(before, mems, touched):
        moved = (m.values.weight.detach() != w0).any(1)
        assert moved[rows].all() and moved.sum() == rows.numel()
    # through the trainer: a stop + resume continues exactly
    train(load_config("default", tiny(corpus, tmp_path / "full", pkm)))
    train(load_config("default", tiny(corpus, tmp_path / "part", pkm)), stop_at=8)
    assert cli.main(["train", "--resume", str(tmp_path / "part")]) == 0
    assert_same_run(tmp_path / "full", tmp_path / "part")


# -- Transformer-XL training: ordered lanes, memory carried across steps --------------------------
XL = ["model.position=xl_relative", "model.memory={name: xl_memory, mem_len: 48}"]


def _lanes(tokens, lanes: int) -> torch.Tensor:
    """The stream cut into ``lanes`` contiguous lanes (remainder dropped): (lanes, lane_len)."""
    t = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    n = len(t) // lanes
    return t[:lanes * n].view(lanes, n)


def _segment_ce(model, lanes, seg_len, max_segments=None):
    """Token-mean cross-entropy of a hand-written Transformer-XL loop: every lane read from its
    start in segments of seg_len, forward_segment with the memory carried."""
    mem, total, count = None, 0.0, 0
    for k, s in enumerate(range(0, lanes.shape[1] - 1, seg_len)):
        if max_segments is not None and k >= max_segments:
            break
        w = lanes[:, s:s + seg_len + 1]
        out = model.forward_segment(w[:, :-1], mem)
        mem = out.state
        total += torch.nn.functional.cross_entropy(
            out.logits.flatten(0, 1), w[:, 1:].flatten(), reduction="sum").double().item()
        count += w[:, 1:].numel()
    return total / count


def test_lane_reader_reads_each_lane_in_order_and_wraps_at_its_end():
    from tevo.data.stream import LaneReader
    r = LaneReader(23, lanes=2, seg_len=4)                 # lanes [0, 11), [11, 22); 22 dropped
    assert r.lane_len == 11
    steps = [r.take() for _ in range(3)]
    assert steps[0].tolist() == [[0, 1, 2, 3, 4], [11, 12, 13, 14, 15]]
    assert steps[1].tolist() == [[4, 5, 6, 7, 8], [15, 16, 17, 18, 19]]   # shares one token
    assert steps[2].tolist() == [[8, 9, 10, 0, 1], [19, 20, 21, 11, 12]]  # wraps in its lane
    st = r.state_dict()
    assert st == {"offset": 1, "lanes": 2, "lane_len": 11}
    again = LaneReader(23, 2, 4)
    again.load_state_dict(st)
    assert np.array_equal(again.take(), r.take())
    with pytest.raises(tevo.InputError, match="lanes"):
        LaneReader(24, 3, 4).load_state_dict(st)
    with pytest.raises(tevo.InputError, match="train.batch_size"):
        LaneReader(23, 5, 4)                               # 4 tokens a lane: not one segment


def test_xl_memory_training_reads_lanes_in_order_and_carries_the_memory(corpus, tmp_path):
    """Transformer-XL training (Dai et al., 2019, §3.2): step t feeds lane b's tokens
    [b·lane_len + 32t, b·lane_len + 32(t+1) + 1) to forward_segment with the memory left by step
    t-1 (per micro-batch of lanes). At a negligible learning rate the logged losses equal a
    hand-written loop over forward_segment with the initial weights; without the memory they
    would not."""
    ov = [*XL, "train.lr=1e-9", "train.steps=3", "train.eval_every=0", "train.grad_accum=2",
          "train.final_eval_batches=1"]
    tr = Trainer(load_config("default", tiny(corpus, tmp_path / "xl", *ov)))
    model0 = copy.deepcopy(tr.model).eval()
    tr.fit()
    lanes = _lanes(tr.data.streams["train"].tokens, 8)
    got = losses(tmp_path / "xl")
    mem = None
    with torch.no_grad():
        for t in range(3):
            w = lanes[:, 32 * t:32 * t + 33]
            out = model0.forward_segment(w[:, :-1], mem)
            ce = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), w[:, 1:].flatten())
            assert abs(ce.item() - got[t + 1]) < 1e-5, (t, ce.item(), got[t + 1])
            if t:
                alone = model0.forward_segment(w[:, :-1]).logits
                ce0 = torch.nn.functional.cross_entropy(alone.flatten(0, 1), w[:, 1:].flatten())
                assert abs(ce0.item() - got[t + 1]) > 1e-3          # the memory was used
            mem = out.state
    assert [m["seen"].tolist() for m in tr.memories] == [[96] * 4] * 2   # 3 segments per lane
    assert all(x.shape == (4, 48, 32) and not x.requires_grad
               for m in tr.memories for x in m["layers"])
    assert tr.data.state_dict()["lanes"]["offset"] == 96


def test_xl_memory_training_resumes_exactly_and_accumulates_disjoint_lanes(corpus, tmp_path):
    """2N steps equal N steps + resume + N steps bit for bit (dropout on, two micro-batches of
    lanes): the checkpoint holds the lane offset and every lane's memory (torch.save, loaded
    with weights_only=True). Accumulating two micro-batches of 4 lanes equals one of 8."""
    ov = [*XL, "model.dropout=0.1", "train.grad_accum=2"]
    train(load_config("default", tiny(corpus, tmp_path / "full", *ov)))
    train(load_config("default", tiny(corpus, tmp_path / "part", *ov)), stop_at=8)
    st = torch.load(latest_checkpoint(tmp_path / "part") / STATE, weights_only=True)
    assert st["data"]["lanes"]["offset"] == 8 * 32 and st["data"]["lanes"]["lanes"] == 8
    assert [x.shape for x in st["memory"]["layers"]] == [(8, 48, 32)] * 2
    assert st["memory"]["seen"].tolist() == [8 * 32] * 8
    assert cli.main(["train", "--resume", str(tmp_path / "part")]) == 0
    assert_same_run(tmp_path / "full", tmp_path / "part")
    ov = [*XL, "train.steps=4", "train.eval_every=0"]
    train(load_config("default", tiny(corpus, tmp_path / "one", *ov)))
    train(load_config("default", tiny(corpus, tmp_path / "acc", *ov, "train.grad_accum=2")))
    a, b = losses(tmp_path / "one"), losses(tmp_path / "acc")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    assert all(abs(a[s] - b[s]) < 1e-4 for s in a), (a, b)


def test_xl_memory_validation_reads_the_split_in_order_with_the_memory(corpus, tmp_path,
                                                                       capsys):
    """Validation and `tevo eval` of a Transformer-XL run read the split in order, in
    batch_size lanes and segments of seq_len, the memory carried: they equal a hand-written
    loop over forward_segment (whole split, and the first 3 segments of every lane); with
    mem_len ≥ a lane, segment-wise evaluation is one long causal pass over each lane."""
    ov = ["model.position=xl_relative", "model.memory={name: xl_memory, mem_len: 16}",
          "train.steps=2", "train.eval_every=0", "train.final_eval_batches=null",
          "train.ckpt_every=2"]
    run = tmp_path / "short"
    s = train(load_config("default", tiny(corpus, run, *ov)))
    r = load_run(run)
    lanes = _lanes(r.data.streams["val"].tokens, 8)
    with torch.no_grad():
        ref = _segment_ce(r.model, lanes, 32)
        ref3 = _segment_ce(r.model, lanes, 32, max_segments=3)
    assert s["val_tokens"] == lanes.shape[0] * (lanes.shape[1] - 1)
    assert abs(s["final_val_loss"] - ref) < 1e-6, (s["final_val_loss"], ref)
    tr = Trainer(load_config(run / "config.yaml"), run_dir=run, resume=True)
    assert abs(tr.evaluate("val", 3)["loss"] - ref3) < 1e-6
    capsys.readouterr()
    assert cli.main(["eval", str(run), "--json"]) == 0                  # tevo eval: the same
    assert json.loads(capsys.readouterr().out)["loss"] == s["final_val_loss"]

    n_lane = lanes.shape[1]
    ov[1] = f"model.memory={{name: xl_memory, mem_len: {n_lane}}}"
    s = train(load_config("default", tiny(corpus, tmp_path / "full", *ov)))
    r = load_run(tmp_path / "full")
    with torch.no_grad():
        logits = r.model(lanes[:, :-1]).logits                        # one pass per lane
    long = torch.nn.functional.cross_entropy(logits.flatten(0, 1), lanes[:, 1:].flatten())
    assert n_lane > 10 * 32 and abs(s["final_val_loss"] - long.item()) < 1e-5


def test_xl_memory_training_refuses_what_cannot_carry_a_memory(corpus, tmp_path):
    from tevo.train.segments import check_segment_training
    bad = [(["model.position=learned"], "model.position"),        # positions grow past a table
           (["data.task={name: copy, vocab: 8, length: 6}"], "model.memory")]
    for extra, field in bad:
        with pytest.raises(tevo.ConfigError) as e:
            Trainer(load_config("default", tiny(corpus, tmp_path / "bad", *XL, *extra)))
        assert str(e.value).startswith(field) and "\n" not in str(e.value)
    model = tevo.build_model({"arch": "gpt", "vocab_size": 16, "d_model": 16, "n_layers": 1,
                              "mixer": {"name": "softmax", "heads": 2}, "position": "rope",
                              "memory": {"name": "xl_memory", "mem_len": 4}})
    with pytest.raises(tevo.ConfigError, match=r"^train.distributed: .*forward_segment"):
        check_segment_training(model, fsdp=True)


def test_xl_memory_ddp_matches_one_process_and_resumes_in_one(corpus, tmp_path):
    """Under DDP each rank trains its own lanes (rank r: lanes [4r, 4r + 4), two micro-batches
    of 2) with their memories; the losses equal one process, and the checkpoint holds every
    lane's memory in lane order, so one process resumes a two-process run."""
    ov = [*XL, "train.steps=4", "train.eval_every=2", "train.grad_accum=2",
          "train.ckpt_every=2"]
    torchrun_train(*tiny(corpus, tmp_path / "ddp", *ov))
    with threads(1):
        train(load_config("default", tiny(corpus, tmp_path / "single", *ov)))
    a, b = losses(tmp_path / "single"), losses(tmp_path / "ddp")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    assert all(abs(a[s] - b[s]) < 1e-4 for s in a), (a, b)
    va, vb = losses(tmp_path / "single", "val"), losses(tmp_path / "ddp", "val")
    assert sorted(va) == sorted(vb) and all(abs(va[s] - vb[s]) < 1e-4 for s in va)
    shutil.copytree(tmp_path / "ddp", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "step_00000004")
    (tmp_path / "resumed" / "summary.json").unlink()
    with threads(1):
        assert cli.main(["train", "--resume", str(tmp_path / "resumed")]) == 0
    c = losses(tmp_path / "resumed")
    assert sorted(c) == [1, 2, 3, 4] and all(abs(c[s] - a[s]) < 1e-4 for s in a)
