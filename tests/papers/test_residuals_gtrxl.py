"""GTrXL (Parisotto et al., 2019), eqs. 5–8: a GRU-type gate g(x, ReLU(F(LN(x)))) replaces the
residual add; with b_g > 0 it starts close to the identity."""
import torch

import tevo
from tiny import make_residual


def test_gtrxl_gate_formula_and_identity_at_init():
    torch.manual_seed(0)
    r = make_residual("gtrxl_gate")
    x = torch.randn(2, 6, 16)
    f = torch.nn.Linear(16, 16)
    d = 16
    Wr, Wz, Wg = r.w_y.weight[:d], r.w_y.weight[d:2 * d], r.w_y.weight[2 * d:]
    Ur, Uz = r.u_x.weight[:d], r.u_x.weight[d:]
    y = torch.relu(f(r.norm(x)))
    rr = torch.sigmoid(y @ Wr.T + x @ Ur.T)
    z = torch.sigmoid(y @ Wz.T + x @ Uz.T - 2.0)
    hh = torch.tanh(y @ Wg.T + (rr * x) @ r.u_g.weight.T)
    torch.testing.assert_close(r(x, f), (1 - z) * x + z * hh)
    # identity bias: with large b_g the gate passes x through unchanged
    big = tevo.build("residual", {"name": "gtrxl_gate", "gate_bias": 40.0}, d_model=16)
    torch.testing.assert_close(big(x, f), x, atol=1e-6, rtol=0)
    # at the model's initialisation every gate is close to the identity: z ≈ σ(−2), so each
    # sublayer moves the stream by about σ(−2)·‖x‖, far less than a plain residual branch
    model = tevo.build_model({"arch": "gpt", "vocab_size": 50, "d_model": 32, "n_layers": 2,
                              "max_len": 32, "residual": "gtrxl_gate",
                              "mixer": {"name": "softmax", "heads": 4}}).eval()
    ids = torch.randint(0, 50, (2, 12))
    io = []
    hooks = [b.register_forward_hook(lambda m, a, o: io.append((a[0], o[0])))
             for b in model.blocks.blocks]
    model(ids)
    for h in hooks:
        h.remove()
    s = torch.sigmoid(torch.tensor(-2.0)).item()
    for xin, xout in io:                     # two gated sublayers per block
        rel = ((xout - xin).norm() / xin.norm()).item()
        assert rel < 2.5 * s, rel
        assert rel > 0
