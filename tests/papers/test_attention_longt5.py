"""LongT5 TGlobal: matches a brute-force per-token reference of §3.1.2 (padding, partial final
block, side bias); equals Hugging Face ``LongT5TransientGlobalAttention`` with copied weights
(local T5 bias supplied through the model's bias hook); memory O(n (r + n/k))."""
import pytest
import torch

from papers.attention_reference import ctx, largest_intermediate, qkv
from tevo.mixers.attention.longt5 import t5_relative_bucket
from tiny import make_mixer

D, H = 16, 2


def brute_force(m, x, mask):
    """One token at a time, straight from the equations."""
    B, n, _ = x.shape
    q, k, v = qkv(m, x)                                              # (B, h, n, e)
    e, kb, r = q.shape[-1], m.global_block, m.radius
    sc = m.scale if m.scale is not None else e ** -0.5
    out = torch.zeros(B, H, n, e)
    for b in range(B):
        L = int(mask[b].sum())
        full = L // kb
        block = [min(i // kb, full - 1) for i in range(L)]          # partial block joins previous
        sums = torch.zeros(full, D)
        for i in range(L):
            if block[i] >= 0:
                sums[block[i]] += x[b, i]
        xg = sums * torch.rsqrt(sums.pow(2).mean(-1, keepdim=True) + m.norm_eps) * m.global_norm
        kg = m._split(m.k_proj(xg)[None], H)[0]                     # (h, G, e)
        vg = m._split(m.v_proj(xg)[None], H)[0]
        for hh in range(H):
            for i in range(L):
                s, vals = [], []
                for j in range(L):
                    if abs(i - j) <= r:
                        s.append(q[b, hh, i] @ k[b, hh, j] * sc)
                        vals.append(v[b, hh, j])
                for g in range(full):
                    bucket = t5_relative_bucket(torch.tensor(g - block[i]), True, m.num_buckets,
                                                m.max_distance)
                    s.append(q[b, hh, i] @ kg[hh, g] * sc + m.side_bias.weight[bucket, hh])
                    vals.append(vg[hh, g])
                w = torch.stack(s).softmax(0)
                out[b, hh, i] = (w[:, None] * torch.stack(vals)).sum(0)
    return m.o_proj(out.transpose(1, 2).reshape(B, n, H * e))


@pytest.mark.parametrize("r,kb,n", [(2, 3, 13), (1, 4, 9), (3, 2, 12), (2, 20, 10)])
def test_matches_brute_force_reference(r, kb, n):
    m = make_mixer("longt5_tglobal", False, d=D, heads=H, radius=r, global_block=kb)
    with torch.no_grad():
        m.global_norm.normal_(1.0, 0.3)
        m.side_bias.weight.normal_()
    x = torch.randn(3, n, D)
    mask = torch.ones(3, n, dtype=torch.bool)
    mask[1, n - 3:], mask[2, 5:] = False, False
    y, _ = m(x, ctx(x, False, mask))
    with torch.no_grad():
        ref = brute_force(m, x, mask)
    torch.testing.assert_close(y[mask], ref[mask], atol=1e-5, rtol=1e-4)


class _T5LocalBias(torch.nn.Module):
    """The model-level T5 relative bias (what HF's layer-0 ``relative_attention_bias`` is),
    through the ``bias`` hook."""

    hooks = frozenset({"bias"})

    def __init__(self, emb, num_buckets, max_distance):
        super().__init__()
        self.emb, self.nb, self.md = emb, num_buckets, max_distance

    def bias(self, q, k, q_pos, k_pos):
        rel = k_pos[:, None, :] - q_pos[:, :, None]                 # memory − query
        return self.emb(t5_relative_bucket(rel, True, self.nb, self.md)).permute(0, 3, 1, 2)


def test_equals_hugging_face_longt5_transient_global_attention():
    tr = pytest.importorskip("transformers")
    from transformers.models.longt5.modeling_longt5 import LongT5TransientGlobalAttention
    d, h, r, kb, n = 32, 4, 3, 4, 19
    cfg = tr.LongT5Config(d_model=d, d_kv=d // h, num_heads=h, local_radius=r,
                          global_block_size=kb, relative_attention_num_buckets=16,
                          relative_attention_max_distance=32, dropout_rate=0.0,
                          encoder_attention_type="transient-global", is_decoder=False)
    hf = LongT5TransientGlobalAttention(cfg, has_relative_attention_bias=True).eval()
    with torch.no_grad():
        hf.global_input_layer_norm.weight.normal_(1.0, 0.3)
        for p in (hf.relative_attention_bias.weight, hf.global_relative_attention_bias.weight):
            p.normal_()
    m = make_mixer("longt5_tglobal", False, d=d, heads=h, radius=r, global_block=kb, scale=1.0,
                   num_buckets=16, max_distance=32, bias=False)
    with torch.no_grad():
        for a, b in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("o_proj", "o")):
            getattr(m, a).weight.copy_(getattr(hf, b).weight)
        m.global_norm.copy_(hf.global_input_layer_norm.weight)
        m.side_bias.weight.copy_(hf.global_relative_attention_bias.weight)
    pos = _T5LocalBias(hf.relative_attention_bias, 16, 32)
    x = torch.randn(2, n, d)
    mask = torch.ones(2, n, dtype=torch.long)
    mask[1, 14:] = 0                                                 # right padding
    ref = hf(x, mask=mask)[0]
    y, _ = m(x, ctx(x, False, mask.bool(), pos=pos))
    real = mask.bool()
    torch.testing.assert_close(y[real], ref[real], atol=1e-5, rtol=1e-4)


def test_memory_grows_as_n_times_radius_plus_globals():
    m = make_mixer("longt5_tglobal", False, d=D, heads=H, radius=4, global_block=64)
    s1 = largest_intermediate(m, torch.randn(1, 512, D), False)
    s2 = largest_intermediate(m, torch.randn(1, 1024, D), False)
    assert s2 / s1 < 2.5 and s2 < H * 1024 * 1024 / 16


def test_bad_options_are_config_errors():
    from tevo.errors import ConfigError
    for kw in ({"radius": -1}, {"global_block": 0}):
        with pytest.raises(ConfigError):
            make_mixer("longt5_tglobal", False, d=D, heads=H, **kw)
