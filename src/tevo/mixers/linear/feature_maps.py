"""Feature maps φ of kernel (linear) attention: sim(q, k) = φ(q)ᵀ φ(k), a small registry shared by
``linear``, ``performer``, ``rfa``, ``learned_kernel``, ``fast_weight``, ``momentum``,
``cosformer``, ``flowformer`` and ``simpletron``.

Every map takes x (B, h, n, e) → (B, h, n, m) with ``out_dim`` = m, declares ``positive``
(φ ≥ 0, so a normalised attention's denominator cannot change sign), and may use the token
positions (B, n) (cosFormer's reweighting). Random-feature maps draw their projection at
construction (a buffer: saved with the model, identical in eval) and redraw it only in training,
when the mixer calls ``maybe_redraw()`` once per forward (never between queries and keys).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...registry import FEATURE_MAPS

TEST = "tests/papers/test_linear_feature_maps.py::"


class FeatureMap(nn.Module):
    """φ: (B, h, n, e) → (B, h, n, out_dim)."""

    positive: bool = True

    def __init__(self, head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        self.out_dim = head_dim

    def forward(self, x: Tensor, positions: Tensor | None = None,
                is_query: bool = False) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def maybe_redraw(self) -> None:
        """Called once per training forward; random-feature maps redraw on their schedule."""


def build_feature_map(spec, head_dim: int, heads: int = 1, max_len: int = 4096) -> FeatureMap:
    return FEATURE_MAPS.build(spec, "mixer.feature_map", head_dim=head_dim, heads=heads,
                              max_len=max_len)


# -- deterministic maps -----------------------------------------------------------------------
@FEATURE_MAPS.register(
    "elu+1", paper="Transformers are RNNs (Katharopoulos et al., 2020)",
    equation="§3.2.1: φ(x) = elu(x) + 1", complexity=("O(n e)", "O(n e)"),
    test=TEST + "test_elementwise_maps_match_formulas")
class EluPlusOne(FeatureMap):
    """elu(x) + 1: positive, smooth, gradient everywhere."""

    def forward(self, x, positions=None, is_query=False):
        return F.elu(x) + 1.0


@FEATURE_MAPS.register(
    "relu", paper="cosFormer (Qin et al., 2022) §3.2; linear-attention posts",
    equation="φ(x) = max(x, 0)", complexity=("O(n e)", "O(n e)"),
    test=TEST + "test_elementwise_maps_match_formulas")
class ReluMap(FeatureMap):
    """max(x, 0): non-negative and sparse."""

    def forward(self, x, positions=None, is_query=False):
        return F.relu(x)


@FEATURE_MAPS.register(
    "exp", paper="Linear-attention posts (Su, 2020): sim(q, k) = e^q · e^k",
    equation="φ(x) = exp(x)", complexity=("O(n e)", "O(n e)"),
    test=TEST + "test_elementwise_maps_match_formulas")
class ExpMap(FeatureMap):
    """exp(x) elementwise (computed in fp32 by the mixers)."""

    def forward(self, x, positions=None, is_query=False):
        return x.exp()


@FEATURE_MAPS.register(
    "softmax", paper="Efficient Attention: Attention with Linear Complexities (Shen et al., "
                     "2021); linear-attention posts",
    equation="φ(x) = softmax(x) over the feature dimension", complexity=("O(n e)", "O(n e)"),
    test=TEST + "test_elementwise_maps_match_formulas")
class SoftmaxFeatures(FeatureMap):
    """softmax over features (per token), so it stays causal (Shen et al. also softmax k over
    the sequence, which only a bidirectional model may do)."""

    def forward(self, x, positions=None, is_query=False):
        return x.softmax(-1)


@FEATURE_MAPS.register(
    "identity", paper="SimpleTRON (Yorsh et al., 2021): attention without softmax",
    equation="φ(x) = x (sign-indefinite: use only unnormalised or count-normalised attention)",
    complexity=("O(1)", "O(1)"), test=TEST + "test_elementwise_maps_match_formulas")
class IdentityMap(FeatureMap):
    """φ(x) = x."""

    positive = False

    def forward(self, x, positions=None, is_query=False):
        return x


@FEATURE_MAPS.register(
    "sigmoid", paper="Flowformer (Wu et al., 2022)", equation="φ(x) = sigmoid(x)",
    complexity=("O(n e)", "O(n e)"), test=TEST + "test_elementwise_maps_match_formulas")
class SigmoidMap(FeatureMap):
    """sigmoid(x): positive and bounded (Flowformer's flows)."""

    def forward(self, x, positions=None, is_query=False):
        return torch.sigmoid(x)


@FEATURE_MAPS.register(
    "dpfp", paper="Linear Transformers Are Secretly Fast Weight Programmers (Schlag et al., "
                  "2021)",
    equation="§5.3 eq. 33: x' = [relu(x), relu(−x)], φ(x) = [x'_i x'_{i+r}]_{r=1..ν} (2eν dims)",
    complexity=("O(n e ν)", "O(n e ν)"), test=TEST + "test_dpfp_matches_the_papers_definition",
    tiny={"nu": 1})
class DPFP(FeatureMap):
    """Deterministic parameter-free projection: products of rolled [relu(x), relu(−x)]."""

    def __init__(self, head_dim: int, nu: int = 1):
        super().__init__(head_dim)
        if not 1 <= int(nu) <= 2 * head_dim - 1:
            raise ConfigError("feature_map.nu", nu, why=f"must be in 1..{2 * head_dim - 1}")
        self.nu = int(nu)
        self.out_dim = 2 * head_dim * self.nu

    def forward(self, x, positions=None, is_query=False):
        xp = torch.cat([F.relu(x), F.relu(-x)], -1)                   # (B, h, n, 2e)
        return torch.cat([xp * xp.roll(r, -1) for r in range(1, self.nu + 1)], -1)


@FEATURE_MAPS.register(
    "cosformer", paper="cosFormer: Rethinking Softmax in Attention (Qin et al., ICLR 2022)",
    equation="eq. 9–11: relu(q_i)ᵀrelu(k_j) cos(π/2·(i−j)/M) = φ(q_i)ᵀφ(k_j), "
             "φ(x_i) = [relu(x_i) cos(πi/2M), relu(x_i) sin(πi/2M)]",
    complexity=("O(n e)", "O(n e)"), test=TEST + "test_cosformer_reweighting_is_cos_distance")
class CosReweighting(FeatureMap):
    """relu features split into cos/sin parts by absolute position, so the product carries the
    locality weight cos(π(i−j)/2M). M is the sequence length, as in the paper: the cosformer
    mixer passes each row's length for bidirectional attention; the default (causal, where the
    final length is unknown while decoding) is max_len, the training window length."""

    def __init__(self, head_dim: int, max_len: int = 4096):
        super().__init__(head_dim)
        self.M = int(max_len)
        self.out_dim = 2 * head_dim

    def forward(self, x, positions=None, is_query=False):
        return self.reweight(F.relu(x), positions)

    def reweight(self, r: Tensor, positions: Tensor | None, M: Tensor | None = None) -> Tensor:
        """[r cos(πi/2M), r sin(πi/2M)] for non-negative features r (B, h, n, m); ``M``: (B,)
        per-row lengths (default max_len)."""
        if positions is None:
            positions = torch.arange(r.shape[-2], device=r.device).unsqueeze(0)
        M = self.M if M is None else M.to(r.dtype)[:, None]            # int | (B, 1)
        ang = (math.pi / 2) * positions.to(r.dtype) / M                # (B, n)
        ang = ang[:, None, :, None]                                    # (B, 1, n, 1)
        return torch.cat([r * ang.cos(), r * ang.sin()], -1)


# -- random features ---------------------------------------------------------------------------
def gaussian_orthogonal_matrix(m: int, e: int, generator=None, device=None) -> Tensor:
    """(m, e) rows: blocks of e orthonormal directions (QR of a Gaussian matrix), each row scaled
    by the norm of an independent Gaussian vector, so rows are marginally N(0, I) while rows in a
    block are exactly orthogonal (Performer §4, "ORF")."""
    blocks = []
    for _ in range(math.ceil(m / e)):
        g = torch.randn(e, e, generator=generator, device=device)
        qm, r = torch.linalg.qr(g)
        qm = qm * torch.sign(torch.diagonal(r)).unsqueeze(0)   # sign fix: Haar-distributed Q
        blocks.append(qm.T)
    w = torch.cat(blocks, 0)[:m]
    norms = torch.randn(m, e, generator=generator, device=device).norm(dim=-1, keepdim=True)
    return w * norms


class RandomFeatureMap(FeatureMap):
    """Base for maps with a projection drawn at construction and redrawn in training."""

    def __init__(self, head_dim: int, redraw_every: int = 0):
        super().__init__(head_dim)
        if int(redraw_every) < 0:
            raise ConfigError("feature_map.redraw_every", redraw_every, why="must be >= 0")
        self.redraw_every = int(redraw_every)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long), persistent=False)

    def draw(self) -> None:  # pragma: no cover
        raise NotImplementedError

    @torch.no_grad()
    def maybe_redraw(self) -> None:
        if self.redraw_every and self.training:
            if int(self.calls) and int(self.calls) % self.redraw_every == 0:
                self.draw()
            self.calls += 1


@FEATURE_MAPS.register(
    "favor+", paper="Rethinking Attention with Performers (Choromanski et al., ICLR 2021)",
    equation="Lemma 1 / eq. 7: φ(x) = exp(ωᵢᵀx̃ − ‖x̃‖²/2)/√m, x̃ = x/e^{1/4}, ω orthogonal "
             "random features; E[φ(q)ᵀφ(k)] = exp(qᵀk/√e)",
    complexity=("O(n m e)", "O(n m)"), test=TEST + "test_favor_is_unbiased_for_the_softmax_kernel",
    tiny={"nb_features": 16})
class FavorPlus(RandomFeatureMap):
    """Positive orthogonal random features for the softmax kernel exp(qᵀk/√e).

    Queries are stabilised by their own max over features (a per-query factor, exact once the
    attention is normalised); keys are not: a max over the sequence would make a token's
    features depend on later tokens and break the recurrent form."""

    def __init__(self, head_dim: int, nb_features: int | None = None, ortho: bool = True,
                 redraw_every: int = 0, stabilize: bool = True):
        super().__init__(head_dim, redraw_every)
        m = int(nb_features) if nb_features else max(1, int(head_dim * math.log(head_dim + 1)))
        if m < 1:
            raise ConfigError("feature_map.nb_features", nb_features, why="must be >= 1")
        self.m, self.ortho, self.stabilize = m, bool(ortho), bool(stabilize)
        self.out_dim = m
        self.register_buffer("omega", torch.empty(m, head_dim))
        self.draw()

    @torch.no_grad()
    def draw(self) -> None:
        if self.ortho:
            w = gaussian_orthogonal_matrix(self.m, self.head_dim, device=self.omega.device)
        else:
            w = torch.randn(self.m, self.head_dim, device=self.omega.device)
        self.omega.copy_(w)

    def log_features(self, x: Tensor) -> Tensor:
        xs = x * self.head_dim ** -0.25                               # exp(qk/√e) = exp(q̃k̃)
        return xs @ self.omega.T.to(x.dtype) - 0.5 * (xs * xs).sum(-1, keepdim=True)

    def forward(self, x, positions=None, is_query=False):
        lf = self.log_features(x)                                     # (B, h, n, m)
        if is_query and self.stabilize:
            lf = lf - lf.amax(-1, keepdim=True).detach()
        return lf.exp() / math.sqrt(self.m)


@FEATURE_MAPS.register(
    "trig", paper="Random Feature Attention (Peng et al., ICLR 2021)",
    equation="eq. 2–3: φ(x) = √(1/m)[sin(ωᵢᵀx), cos(ωᵢᵀx)], ωᵢ ~ N(0, σ²I): "
             "E[φ(x)ᵀφ(y)] = exp(−‖x−y‖²σ²/2); σ learned per head",
    complexity=("O(n m e)", "O(n m)"), test=TEST + "test_trig_is_unbiased_for_the_gaussian_kernel",
    tiny={"nb_features": 16})
class TrigFeatures(RandomFeatureMap):
    """Random Fourier features (sign-indefinite) with a learned bandwidth per head."""

    positive = False

    def __init__(self, head_dim: int, heads: int = 1, nb_features: int | None = None,
                 redraw_every: int = 0, sigma: float = 1.0):
        super().__init__(head_dim, redraw_every)
        self.m = int(nb_features) if nb_features else 2 * head_dim
        self.out_dim = 2 * self.m
        self.log_sigma = nn.Parameter(torch.full((heads,), math.log(sigma)))
        self.register_buffer("eps", torch.empty(self.m, head_dim))
        self.draw()

    @torch.no_grad()
    def draw(self) -> None:
        self.eps.normal_()

    def forward(self, x, positions=None, is_query=False):
        w = self.eps.to(x.dtype) * self.log_sigma.exp().to(x.dtype)[:, None, None]   # (h, m, e)
        proj = torch.einsum("bhne,hme->bhnm", x, w)
        return torch.cat([proj.sin(), proj.cos()], -1) / math.sqrt(self.m)


@FEATURE_MAPS.register(
    "gmm_prf", paper="On Learning the Transformer Kernel (Chowdhury et al., TMLR 2022), "
                     "GMM-PRF",
    equation="ω ~ Σ_c π_c N(μ_c, diag σ_c²) (learned, reparameterised ω = μ_c + σ_c ⊙ ε), "
             "φ(x) = √(π_c/M) exp(ωᵀx̃ − ‖x̃‖²/2): E[φ(x)ᵀφ(y)] = Σ_c π_c "
             "exp(μ_cᵀ(x̃+ỹ) + ½(x̃+ỹ)ᵀΣ_c(x̃+ỹ) − ½‖x̃‖² − ½‖ỹ‖²)",
    complexity=("O(n C M e)", "O(n C M)"),
    test=TEST + "test_gmm_prf_matches_its_closed_form_kernel", tiny={"components": 2,
                                                                    "nb_features": 8})
class GMMPositiveFeatures(RandomFeatureMap):
    """Positive random features whose spectral distribution (a Gaussian mixture per head) is
    learned. At init (μ = 0, σ = 1, one component) the kernel is the softmax kernel."""

    def __init__(self, head_dim: int, heads: int = 1, components: int = 2,
                 nb_features: int | None = None, redraw_every: int = 0, stabilize: bool = True):
        super().__init__(head_dim, redraw_every)
        c = int(components)
        if c < 1:
            raise ConfigError("feature_map.components", components, why="must be >= 1")
        self.c = c
        self.M = int(nb_features) if nb_features else head_dim
        self.out_dim = c * self.M
        self.stabilize = bool(stabilize)
        self.mu = nn.Parameter(torch.zeros(heads, c, head_dim))
        self.log_sigma = nn.Parameter(torch.zeros(heads, c, head_dim))
        self.mix_logits = nn.Parameter(torch.zeros(heads, c))
        self.register_buffer("eps", torch.empty(c, self.M, head_dim))
        self.draw()

    @torch.no_grad()
    def draw(self) -> None:
        self.eps.normal_()

    def omega(self) -> Tensor:
        """(h, C, M, e) samples ω = μ + σ ⊙ ε."""
        return self.mu[:, :, None] + self.log_sigma.exp()[:, :, None] * self.eps

    def forward(self, x, positions=None, is_query=False):
        xs = x * self.head_dim ** -0.25
        om = self.omega().to(x.dtype)
        lf = torch.einsum("bhne,hcme->bhncm", xs, om) \
            - 0.5 * (xs * xs).sum(-1)[..., None, None]                 # (B, h, n, C, M)
        logw = 0.5 * (self.mix_logits.log_softmax(-1) - math.log(self.M))   # √(π_c/M)
        lf = lf + logw.to(x.dtype)[None, :, None, :, None]
        lf = lf.flatten(-2)                                            # (B, h, n, C·M)
        if is_query and self.stabilize:
            lf = lf - lf.amax(-1, keepdim=True).detach()
        return lf.exp()
