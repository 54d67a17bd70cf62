"""Optimus (Li et al., 2020): the sentence VAE's ELBO, free bits, collapse reporting, the two
ways z enters the decoder, and interpolation in the latent space."""
from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, kl_divergence

import tevo
from tevo.errors import ConfigError
from tevo.models.optimus import interpolate
from tevo.objectives.optimus import OptimusELBO

V = 31


def build(inject="both", k=4, pool="first", seed=0):
    torch.manual_seed(seed)
    return tevo.build_model({"arch": "optimus", "d_model": 16, "n_layers": 2, "vocab_size": V,
                             "max_len": 32, "dropout": 0.0,
                             "extra": {"latent_size": k, "inject": inject, "pool": pool}})


def batch(B=3, n=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, n + 1), generator=g)
    labels = ids[:, 1:].clone()
    labels[0, -2:] = -100                                   # some unscored tokens
    return {"input_ids": ids[:, :-1], "labels": labels}


def hand_elbo(model, b, beta, lam):
    """A slow loop: Σ_t −log p(x_t) + β · B · Σ_i max(λ, KL_i), / scored tokens, with KL_i
    from torch.distributions (not the objective's formula)."""
    out = model(b["input_ids"])
    logp = out.logits.double().log_softmax(-1)
    ce, n = 0.0, 0
    B, T = b["labels"].shape
    for i in range(B):
        for t in range(T):
            y = int(b["labels"][i, t])
            if y != -100:
                ce -= float(logp[i, t, y].detach())
                n += 1
    mu, logvar = out.extra["mu"].double(), out.extra["logvar"].double()
    kl = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).mean(0)   # (k,)
    reg = sum(max(lam, float(kl[i].detach())) for i in range(kl.shape[0]))
    return (ce + beta * B * reg) / n, ce / n, kl.detach()


def test_elbo_terms_equal_hand_computation():
    model = build().eval()                                  # z = μ: deterministic
    with torch.no_grad():                                   # a posterior away from the prior
        model.to_latent.weight.mul_(20.0)
        model.to_latent.bias.normal_()
    obj = OptimusELBO(beta=0.7, free_bits=0.0, schedule="constant")
    b = batch()
    loss, m = obj(model, b)
    want, ce, kl = hand_elbo(model, b, 0.7, 0.0)
    assert float(loss.detach()) == pytest.approx(want, rel=1e-5)
    assert float(m["loss"][0] / m["loss"][1]) == pytest.approx(ce, rel=1e-5)
    for i in range(4):
        s, c = m[f"kl_dim_{i}"]
        assert float(s / c) == pytest.approx(float(kl[i]), rel=1e-5, abs=1e-7)
    assert float(m["kl"][0] / m["kl"][1]) == pytest.approx(float(kl.sum()), rel=1e-5)
    assert float(kl.sum()) > 0.1


def test_free_bits_clamps_each_dimension_at_lambda():
    model = build().eval()
    with torch.no_grad():
        model.to_latent.bias.copy_(torch.tensor([0.1, 0.5, 1.5, 3.0, 0.0, 0.0, 0.0, 0.0]))
    b = batch()
    kl = hand_elbo(model, b, 1.0, 0.0)[2]
    lam = float(kl.median())                                 # some dims below λ, some above
    assert (kl < lam).any() and (kl > lam).any()
    obj = OptimusELBO(beta=1.0, free_bits=lam, schedule="constant")
    loss, m = obj(model, b)
    assert float(loss.detach()) == pytest.approx(hand_elbo(model, b, 1.0, lam)[0], rel=1e-5)
    # a clamped dimension passes no gradient to its μ (the free bits are free)
    model.zero_grad()
    loss.backward()
    g = model.to_latent.bias.grad[:4]                         # ∂/∂μ_i through the bias
    lam_ce = OptimusELBO(beta=0.0, free_bits=lam, schedule="constant")
    model.zero_grad()
    lam_ce(model, b)[0].backward()
    g_ce = model.to_latent.bias.grad[:4]
    below = kl < lam
    torch.testing.assert_close(g[below], g_ce[below])        # only the CE's gradient
    assert ((g - g_ce)[~below].abs() > 1e-6).all()           # the KL pulls the others


def test_collapsed_posterior_reports_zero_kl_and_no_active_units():
    model = build().eval()
    with torch.no_grad():                                   # encoder output ignored: q = prior
        model.to_latent.weight.zero_()
        model.to_latent.bias.zero_()
    loss, m = OptimusELBO(beta=1.0, free_bits=0.0, schedule="constant")(model, batch())
    for i in range(4):
        assert float(m[f"kl_dim_{i}"][0]) == 0.0
    assert float(m["active_units"][0]) == 0.0
    with torch.no_grad():                                   # an informative posterior: active
        model.to_latent.weight.normal_(0.0, 5.0)
    _, m = OptimusELBO(beta=1.0, free_bits=0.0, schedule="constant")(model, batch())
    assert float(m["active_units"][0]) > 0
    assert all(float(m[f"kl_dim_{i}"][0]) > 0 for i in range(4))


@pytest.mark.parametrize("inject", ["memory", "embedding", "both"])
def test_injection_changes_logits_in_each_mode(inject):
    model = build(inject).eval()
    ids = batch()["input_ids"]
    z1, z2 = torch.zeros(3, 4), torch.randn(3, 4) * 3
    a, b = model.decode(ids, z1).logits, model.decode(ids, z2).logits
    # every position, the first included, sees z (memory: attended prefix; embedding: added)
    assert ((a - b).abs().amax(-1) > 1e-4).all()
    assert (model.w_mem is not None) == (inject != "embedding")
    assert (model.w_emb is not None) == (inject != "memory")
    # causality: changing a later token leaves earlier logits alone
    ids2 = ids.clone()
    ids2[:, 5] = (ids2[:, 5] + 1) % V
    c = model.decode(ids2, z2).logits
    torch.testing.assert_close(c[:, :5], b[:, :5])
    if inject == "embedding":                              # the hand form: W_E z on each token
        dec = model.decoder
        pos = torch.arange(9).expand(3, 9)
        x = dec.embed_tokens(ids, pos) + model.w_emb(z2)[:, None]
        from tevo.nn.context import MixerContext
        h, _ = dec.blocks(x, MixerContext(causal=True, positions=pos, pos=dec.pos))
        torch.testing.assert_close(dec.head(dec.norm(h)), b)


def test_options_are_one_line_config_errors():
    for extra, opt in (({"inject": "prefix"}, "inject"), ({"latent_size": 0}, "latent_size"),
                       ({"latent_size": -3}, "latent_size"), ({"pool": "max"}, "pool")):
        with pytest.raises(ConfigError) as e:
            tevo.build_model({"arch": "optimus", "d_model": 16, "n_layers": 1,
                              "vocab_size": V, "extra": extra})
        assert opt in str(e.value) and "\n" not in str(e.value)
    for kw, opt in (({"beta": -0.1}, "beta"), ({"free_bits": -1.0}, "free_bits"),
                    ({"schedule": "cosine"}, "schedule"), ({"anneal_steps": 0}, "anneal_steps"),
                    ({"ratio_zero": 0.9, "ratio_increase": 0.5}, "ratio_increase")):
        with pytest.raises(ConfigError) as e:
            OptimusELBO(**kw)
        assert opt in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError):
        OptimusELBO().check_model(tevo.build_model({"arch": "gpt", "d_model": 16,
                                                    "n_layers": 1, "vocab_size": V}))


def test_beta_schedules_and_step_counter():
    lin = OptimusELBO(beta=2.0, schedule="linear", anneal_steps=10)
    assert [lin.beta_at(s) for s in (0, 5, 10, 20)] == [0.0, 1.0, 2.0, 2.0]
    cyc = OptimusELBO(beta=1.0, schedule="cyclical", anneal_steps=8, ratio_zero=0.5,
                      ratio_increase=0.25)
    assert [cyc.beta_at(s) for s in range(10)] == [0, 0, 0, 0, 0, 0.5, 1, 1, 0, 0]
    model = build().train()
    obj = OptimusELBO(beta=1.0, schedule="linear", anneal_steps=4)
    betas = [float(obj(model, batch())[1]["beta"][0]) for _ in range(3)]
    assert betas == [0.0, 0.25, 0.5] and int(model.kl_steps) == 3
    model.eval()
    obj(model, batch())
    assert int(model.kl_steps) == 3                          # evaluation does not advance β


def test_reparametrisation_samples_around_mu_in_training():
    model = build().train()
    ids = batch(B=1)["input_ids"].expand(4000, -1)
    torch.manual_seed(0)
    out = model(ids)
    mu, logvar, z = out.extra["mu"], out.extra["logvar"], out.extra["z"]
    torch.testing.assert_close(z.mean(0), mu[0], atol=0.1, rtol=0)
    torch.testing.assert_close(z.std(0), (0.5 * logvar[0]).exp(), atol=0.05, rtol=0.05)
    model.eval()
    out = model(ids[:2])
    torch.testing.assert_close(out.extra["z"], out.extra["mu"])


@pytest.mark.parametrize("pool", ["first", "mean"])
def test_interpolation_returns_the_endpoints_decodes(pool):
    model = build(pool=pool).eval()
    with torch.no_grad():                                   # z matters to the decodes
        model.to_latent.weight.normal_(0.0, 30.0)
        model.w_emb.weight.normal_(0.0, 3.0)
        model.w_mem.weight.normal_(0.0, 3.0)
    b = batch(B=2, seed=3)["input_ids"]                       # two sentences decoding apart
    path = interpolate(model, b[0], b[1], steps=5, length=6, start_id=3)
    assert [a for a, _ in path] == [0.0, 0.25, 0.5, 0.75, 1.0]
    mu = model.encode(b)[0]
    torch.testing.assert_close(path[0][1], model.greedy(mu[:1], 3, 6)[0])
    torch.testing.assert_close(path[-1][1], model.greedy(mu[1:], 3, 6)[0])
    torch.testing.assert_close(path[2][1], model.greedy(mu.mean(0, keepdim=True), 3, 6)[0])
    assert not torch.equal(path[0][1], path[-1][1])
    # the greedy decode is the argmax of the teacher-forced logits at every step
    seq = path[0][1][None]
    logits = model.decode(seq[:, :-1], mu[:1]).logits
    torch.testing.assert_close(logits.argmax(-1), seq[:, 1:])
    with pytest.raises(ConfigError):
        interpolate(model, b[0], b[1], steps=1)


def test_trainer_runs_optimus_and_logs_kl_per_dimension(tmp_path, capsys):
    import json

    from tevo.cli import main
    run = tmp_path / "run"
    assert main(["train", "default", "model.arch=optimus", "model.d_model=32",
                 "model.n_layers=2", "model.extra.latent_size=4", "objective.name=optimus",
                 "objective.schedule=linear", "objective.anneal_steps=10", "train.steps=30",
                 "train.batch_size=8", "train.threads=1", "train.progress=false",
                 "train.plot=false", "train.eval_every=0", "train.max_minutes=null",
                 f"train.out_dir={run}", "--json"]) == 0
    capsys.readouterr()
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r.get("split") == "train"]
    assert {"kl", "active_units", "beta", *(f"kl_dim_{i}" for i in range(4))} <= set(train[-1])
    assert train[-1]["beta"] == 1.0 and train[0]["beta"] < 1.0       # linear warm-up of β
    assert train[-1]["loss"] < train[0]["loss"]
