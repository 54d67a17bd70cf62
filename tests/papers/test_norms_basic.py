import torch

from tiny import make_norm


def test_layernorm_and_rmsnorm_formulas():
    x = torch.randn(3, 4, 16) * 3 + 1
    ln, rms = make_norm("layernorm"), make_norm("rmsnorm")
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5); ln.bias.normal_(); rms.weight.uniform_(0.5, 1.5)
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    torch.testing.assert_close(ln(x), (x - mu) / torch.sqrt(var + 1e-5) * ln.weight + ln.bias)
    torch.testing.assert_close(rms(x), x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-6) * rms.weight)
