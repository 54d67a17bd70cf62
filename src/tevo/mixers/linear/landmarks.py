"""Landmarks and pseudo-inverses shared by the Nyström-type mixers (nystrom, soft, skyformer) and
LARA's proposals.

Landmarks are segment means over the *real* tokens: real token of rank r (0-based, among L real
tokens) goes to segment floor(r·m/L). Without padding and with m | n these are the contiguous
segments of Nyströmformer (Xiong et al., 2021, §3.2 eq. 11); with padding they ignore the padded
tokens, so real outputs do not depend on the padding. Empty segments (L < m) are reported so the
callers can mask them.

Pseudo-inverses by iteration (no SVD):
- ``razavi``: Z_{k+1} = ¼ Z_k (13I − AZ_k(15I − AZ_k(7I − AZ_k))), Nyströmformer eq. 16
  (Razavi et al., 2014), third order;
- ``newton``: Z_{k+1} = Z_k (2I − A Z_k) (Newton–Schulz / Ben-Israel), second order, SOFT §3.3;
both from Z_0 = Aᵀ/(‖A‖₁‖A‖_∞) per matrix (batch-independent), which converges to A⁺.
``exact`` uses ``torch.linalg.pinv`` (SVD) — for tests and small landmark counts.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import ConfigError

PINV = ("razavi", "newton", "exact")


def segment_ids(mask: Tensor | None, B: int, n: int, m: int, device) -> Tensor:
    """(B, n) segment of each token in [0, m); padded tokens get m (a dump segment)."""
    real = torch.ones(B, n, dtype=torch.bool, device=device) if mask is None else mask.bool()
    rank = real.long().cumsum(-1) - 1
    L = real.long().sum(-1, keepdim=True).clamp_min(1)
    seg = torch.div(rank * m, L, rounding_mode="floor")
    return torch.where(real, seg, torch.full_like(seg, m))


def segment_means(x: Tensor, mask: Tensor | None, m: int) -> tuple[Tensor, Tensor]:
    """x (B, h, n, e) → landmarks (B, h, m, e) and a (B, m) mask of non-empty segments."""
    B, h, n, e = x.shape
    seg = segment_ids(mask, B, n, m, x.device)
    onehot = F.one_hot(seg, m + 1)[..., :m].to(x.dtype)                  # (B, n, m)
    counts = onehot.sum(1)                                                # (B, m)
    sums = torch.einsum("bnm,bhne->bhme", onehot, x)
    return sums / counts.clamp_min(1)[:, None, :, None], counts > 0


def landmark_options(landmarks: int, pinv_iters: int, pinv_method: str, least: int = 1,
                     why: str = "must be >= 1") -> tuple[int, int, str]:
    """Checked (landmarks, pinv_iters, pinv_method) of a landmark mixer: at least ``least``
    landmarks and a known pseudo-inverse method."""
    if int(landmarks) < least:
        raise ConfigError("mixer.landmarks", landmarks, why=why)
    if pinv_method not in PINV:
        raise ConfigError("mixer.pinv_method", pinv_method, PINV)
    return int(landmarks), int(pinv_iters), pinv_method


def _init(A: Tensor) -> Tensor:
    n1 = A.abs().sum(-2).amax(-1)                                         # ‖A‖₁ (max column sum)
    ninf = A.abs().sum(-1).amax(-1)                                       # ‖A‖_∞ (max row sum)
    return A.transpose(-1, -2) / (n1 * ninf)[..., None, None]


def pinv(A: Tensor, method: str = "razavi", iters: int = 6) -> Tensor:
    """Moore–Penrose pseudo-inverse of the last two dims of A by ``method`` (see module doc)."""
    if method not in PINV:
        raise ConfigError("mixer.pinv", method, PINV)
    if method == "exact":
        return torch.linalg.pinv(A)
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    Z = _init(A)
    for _ in range(int(iters)):
        AZ = A @ Z
        if method == "razavi":
            Z = 0.25 * Z @ (13 * eye - AZ @ (15 * eye - AZ @ (7 * eye - AZ)))
        else:
            Z = Z @ (2 * eye - AZ)
    return Z


def mask_landmark_matrix(A: Tensor, ok: Tensor) -> Tensor:
    """Replace rows/columns of empty landmarks (ok: (B, m) False) of a (B, h, m, m) landmark
    kernel by the identity, so its pseudo-inverse is block-diagonal and ignores them."""
    if bool(ok.all()):
        return A
    both = ok[:, None, :, None] & ok[:, None, None, :]
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    return torch.where(both, A, eye.expand_as(A))
