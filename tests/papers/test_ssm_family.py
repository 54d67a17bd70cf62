"""The state-space / long-convolution family with bf16 parameters (a model cast with .to(bf16),
as the speed study's bf16 runs do): the complex SSM pieces and the kernel networks still run in
fp32 and the decode step agrees with the full pass."""
import pytest
import torch

from tiny import ctx_for, make_mixer

NAMES = ["s4d", "s5", "h3", "hyena", "long_conv", "sgconv", "ckconv", "flexconv", "ccnn", "bigs"]


@pytest.mark.parametrize("name", NAMES)
def test_bf16_parameters_forward_and_decode(name):
    causal = name != "bigs"
    m = make_mixer(name, causal).to(torch.bfloat16)
    x = torch.randn(2, 12, 16).to(torch.bfloat16)
    y, _ = m(x, ctx_for(x, causal))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
    if causal:
        st = m.init_state(2, None, torch.bfloat16)
        _, st = m(x[:, :5], ctx_for(x[:, :5], causal), st)
        y5, _ = m(x[:, 5:6], ctx_for(x[:, 5:6], causal), st)
        torch.testing.assert_close(y5.float(), y[:, 5:6].float(), atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("name", ["hyena", "ckconv"])
def test_decode_kernel_cache_follows_parameter_changes(name):
    """Decoding reuses the kernel while the parameters are unchanged; an in-place update (an
    optimiser step, load_state_dict) must give the new kernel, not a stale one."""
    m = make_mixer(name, True)
    x = torch.randn(1, 6, 16)
    with torch.no_grad():
        for _ in range(2):                                   # second pass: after an update
            st = m.init_state(1)
            _, st = m(x[:, :5], ctx_for(x[:, :5], True), st)
            y5, _ = m(x[:, 5:6], ctx_for(x[:, 5:6], True), st)
            full, _ = m(x, ctx_for(x, True))
            torch.testing.assert_close(y5, full[:, 5:6], rtol=1e-5, atol=1e-5)
            for p in m.parameters():
                p.mul_(1.1)
