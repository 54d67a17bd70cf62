import torch

from tiny import make_residual


def test_pre_and_post_ln_formulas():
    x = torch.randn(2, 5, 16)
    f = torch.nn.Linear(16, 16)
    pre, post = make_residual("pre_ln"), make_residual("post_ln")
    torch.testing.assert_close(pre(x, f), x + f(pre.norm(x)))
    torch.testing.assert_close(post(x, f), post.norm(x + f(x)))
    assert pre.final_norm and not post.final_norm
