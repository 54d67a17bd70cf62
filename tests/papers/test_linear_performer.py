"""Performer (FAVOR+): approximation error vs exact softmax falls as features grow; three forms
agree; deterministic in eval, redrawn in training."""
import torch

from tevo.nn.attention import eager_attention
from tevo.nn.masks import attention_mask
from tiny import make_mixer
from papers.linear_reference import assert_rel_close, ctx, forms_agree, left_padded


def _softmax_reference(m, x, causal):
    B, n, _ = x.shape
    h, e = m.heads, m.head_dim
    q, k, v = (p(x).view(B, n, h, e).transpose(1, 2) for p in (m.q_proj, m.k_proj, m.v_proj))
    y = eager_attention(q, k, v, attention_mask(n, n, causal, None))   # scale 1/√e
    return m.o_proj(y.transpose(1, 2).reshape(B, n, h * e))


def test_error_vs_softmax_falls_as_features_grow():
    """Fixed random inputs and weights; mean relative error over redraws for m = 8 … 2048."""
    torch.manual_seed(0)
    x = torch.randn(2, 16, 16) * 0.5
    for causal in (False, True):
        m = make_mixer("performer", causal, nb_features=8)
        ref = _softmax_reference(m, x, causal).detach()
        errs = []
        for feats in (8, 64, 512, 2048):
            e = 0.0
            for seed in range(4):
                torch.manual_seed(seed)
                p = make_mixer("performer", causal, nb_features=feats)
                p.load_state_dict({k: v for k, v in m.state_dict().items() if "omega" not in k},
                                  strict=False)
                y, _ = p(x, ctx(x, causal))
                e += ((y - ref).norm() / ref.norm()).item() / 4
            errs.append(e)
        assert all(a > b for a, b in zip(errs, errs[1:])), errs
        assert errs[-1] < 0.1 * errs[0] + 0.05, errs


def test_three_forms_agree_with_padding():
    m = make_mixer("performer", True, nb_features=16, chunk=4)
    x, mask = left_padded()
    forms_agree(m, ["recurrent", "parallel", "chunk", "scan"], x, mask)


def test_deterministic_in_eval_and_redrawn_in_training():
    m = make_mixer("performer", True, nb_features=16, redraw_every=2)
    x = torch.randn(2, 8, 16)
    y1, _ = m(x, ctx(x, True))
    y2, _ = m(x, ctx(x, True))
    assert torch.equal(y1, y2)
    w0 = m.fmap.omega.clone()
    m.train()
    for _ in range(3):
        m(x, ctx(x, True))
    assert not torch.equal(m.fmap.omega, w0)
    assert "fmap.omega" in m.state_dict()          # saved with the model: reloads identically
    m2 = make_mixer("performer", True, nb_features=16, redraw_every=2)
    m2.load_state_dict(m.state_dict())
    m.eval()
    assert_rel_close(m2(x, ctx(x, True))[0], m(x, ctx(x, True))[0], 1e-6)
