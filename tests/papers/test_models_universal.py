"""Universal Transformer (Dehghani et al., 2019) and Adaptive Computation Time (Graves, 2016):
halting weights are Graves's algorithm (they sum to 1 with the remainder), the ponder cost
N + R enters the loss, a halting unit that stops at step k is a k-layer weight-shared stack,
and cached decoding runs every step's cache."""
import pytest
import torch

import tevo
from tevo.errors import ConfigError
from tiny import cached_logits

V = 23


def _model(arch="act", n_layers=1, **extra):
    torch.manual_seed(0)
    return tevo.build_model({"arch": arch, "vocab_size": V, "d_model": 16, "n_layers": n_layers,
                             "max_len": 64, "mixer": {"name": "softmax", "heads": 2},
                             "position": "rope", "extra": extra}).eval()


def _graves(h, eps, max_steps):
    """Per position: N = first n with Σ_{n' ≤ n} h ≥ 1 − ε (or max_steps), R = 1 − Σ_{n<N} h,
    p = h before N, R at N, 0 after."""
    p = [0.0] * max_steps
    cum = 0.0
    for n in range(max_steps):
        if cum + h[n] >= 1 - eps or n == max_steps - 1:
            p[n] = 1 - cum
            return p, n + 1, 1 - cum
        p[n] = h[n]
        cum += h[n]


def test_halting_weights_sum_to_one_and_match_a_loop_of_graves_algorithm():
    model = _model("act", n_layers=2, max_steps=5, halting_bias=-1.0)
    with torch.no_grad():
        model.halt.weight.normal_(0, 1.0)
    states = []
    model.blocks.register_forward_hook(lambda mod, inp, out: states.append(out[0]))
    ids = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        out = model(ids)
    H = out.extra["halting"]
    h, p = H["h"], H["p"]
    S = h.shape[-1]
    assert len(states) == S and 1 < S <= 5
    Ns = set()
    for b in range(2):
        for t in range(9):
            hp = h[b, t].tolist() + [0.0] * (5 - S)
            ref_p, N, R = _graves(hp, 0.01, 5)
            Ns.add(N)
            assert N <= S and H["N"][b, t].item() == N
            assert abs(H["R"][b, t].item() - R) < 1e-6
            torch.testing.assert_close(p[b, t], torch.tensor(ref_p[:S]), atol=1e-6, rtol=0)
    assert len(Ns) > 1                                              # positions halt differently
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 9), atol=1e-6, rtol=0)
    y = sum(p[..., n, None] * states[n] for n in range(S))         # y = Σ p^n s^n
    torch.testing.assert_close(out.logits, model.head(model.norm(y)), atol=1e-5, rtol=1e-5)


def test_ponder_cost_enters_the_loss():
    """aux = τ · mean(N + R); its gradient reaches the halting unit (raising b_h lowers R)."""
    model = _model("universal", max_steps=4, ponder_weight=0.5, halting_bias=-1.0).train()
    ids = torch.randint(0, V, (2, 7))
    out = model(ids)
    H = out.extra["halting"]
    rho = (H["N"] + H["R"]).mean()
    assert abs(out.aux_loss.item() - 0.5 * rho.item()) < 1e-6
    g, = torch.autograd.grad(out.aux_loss, [model.halt.bias])
    assert g.item() < 0
    from tevo.objectives.clm import CausalLM                        # the objective adds it
    batch = {"input_ids": ids, "labels": ids}
    loss_with, _ = CausalLM()(model, batch)
    model.tau = 0.0
    loss_without, _ = CausalLM()(model, batch)
    assert abs((loss_with - loss_without).item() - 0.5 * rho.item()) < 1e-5


@pytest.mark.parametrize("k", [1, 3])
def test_a_threshold_stopping_at_step_k_equals_a_k_layer_weight_shared_stack(k):
    """h ≈ 0 (b_h = −30) and max_steps = k: every position runs to step k with R = 1, so the
    output is s^k of the shared stack applied k times (with UT's timestep signal); halting none
    is the same; h ≈ 1 (b_h = +30) halts at step 1 whatever max_steps."""
    ids = torch.randint(0, V, (2, 8))
    model = _model("universal", max_steps=k, halting_bias=-30.0)
    fixed = _model("universal", max_steps=k, halting="none")
    fixed.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        out = model(ids)
        pos = torch.arange(8).expand(2, 8)
        s = model.embed_tokens(ids, pos)
        for t in range(1, k + 1):                                  # k layers, one weight set
            s, _ = model.blocks(s + model.timestep(t, s.device, s.dtype),
                                tevo.nn.context.MixerContext(causal=True, positions=pos,
                                                             pos=model.pos))
        ref = model.head(model.norm(s))
        assert (out.extra["halting"]["N"] == k).all()
        torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fixed(ids).logits, ref, atol=1e-5, rtol=1e-5)
        one = _model("universal", max_steps=4, halting_bias=30.0)
        o1 = one(ids)
        assert (o1.extra["halting"]["N"] == 1).all() and o1.extra["halting"]["h"].shape[-1] == 1
        s1 = one.blocks(one.embed_tokens(ids, pos) + one.timestep(1, s.device, s.dtype),
                        tevo.nn.context.MixerContext(causal=True, positions=pos, pos=one.pos))[0]
        torch.testing.assert_close(o1.logits, one.head(one.norm(s1)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["universal", "act"])
def test_cached_decoding_equals_the_full_pass(arch):
    model = _model(arch, n_layers=2, max_steps=3, halting_bias=-0.5)
    with torch.no_grad():
        model.halt.weight.normal_(0, 1.0)
        ids = torch.randint(0, V, (2, 10))
        mask = torch.ones(2, 10, dtype=torch.bool)
        mask[0, :2] = False
        full = model(ids, attention_mask=mask).logits
        cached = cached_logits(model, ids, mask, prefill=5)
    torch.testing.assert_close(cached[mask], full[mask], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("extra,field", [
    ({"max_steps": 0}, "model.extra.max_steps"),
    ({"act_epsilon": 1.5}, "model.extra.act_epsilon"),
    ({"ponder_weight": -1}, "model.extra.ponder_weight"),
    ({"halting": "fixed"}, "model.extra.halting"),
    ({"steps": 3}, "model.extra.steps"),
])
def test_bad_options_are_one_line_errors(extra, field):
    with pytest.raises(ConfigError) as e:
        _model("universal", **extra)
    assert str(e.value).startswith(field) and "\n" not in str(e.value)
