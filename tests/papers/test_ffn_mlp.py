import torch

from tiny import make_ffn


def test_mlp_matches_formula():
    f = make_ffn("mlp")
    x = torch.randn(2, 5, 16)
    ref = f.fc2(torch.nn.functional.gelu(x @ f.fc1.weight.T + f.fc1.bias))
    torch.testing.assert_close(f(x), ref)
    assert f.fc1.out_features == 64
