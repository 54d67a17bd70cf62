"""LSH attention (Reformer): shared-QK attention restricted to hash buckets, in sorted chunks.

Paper: Reformer: The Efficient Transformer (Kitaev, Kaiser & Levskaya, 2020), §2:
    h(x) = argmax([xR; −xR]),  R a random (d_k × b/2) rotation per round        (angular LSH)
    o_i = Σ_{j ∈ P_i} exp(q_i·k_j − z(i, P_i)) v_j,   k_j = q_j/‖q_j‖            (eq. 3, shared QK)
Queries are sorted by (bucket, position) and cut into chunks of c; each query attends to its
chunk and ``chunks_before``/``chunks_after`` neighbouring chunks (eq. 5). With r rounds the
outputs are combined by their log-partition functions, o_i = Σ_r exp(z_r(i) − z(i)) o_i^(r)
(eq. 6-7). A token never attends to itself unless no other key is allowed (§2: its score is
replaced by −10⁵, as in the reference implementation, while masked keys get −∞).

Chunking (``chunking``):
- ``global`` — the paper's and trax/Hugging Face's scheme: chunks of the whole sorted sequence, so
  a chunk may span neighbouring buckets. Bidirectional only: which keys share a chunk with token t
  depends on the buckets of later tokens, which a causal model must not see.
- ``bucket`` — chunks are cut inside each bucket (local rank // c), so P_i ⊆ {j ≤ i : same
  bucket} depends only on earlier tokens: strictly causal, and it has an incremental form.
``auto`` picks ``bucket`` for causal and ``global`` for bidirectional use. Unlike trax/HF, the
first chunk of a round does not wrap around to the last chunk (so padding cannot change real
tokens' keys). Padded tokens get a bucket of their own, sorted last. Hashing is deterministic
given ``seed`` (the rotations are a buffer drawn from a seeded generator, as HF's ``hash_seed``).

Full passes gather, per query, the window of sorted neighbours the chunks can contain, so the
score tensor is (n × W) with W = c·(before + after + 2) − 1, never n × n. Decode steps use the
dense form over the cache (the same function, checked by the conformance suite).
Complexity: time O(r n (log n + c d)); memory O(r n c); decode O(r n) per token.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...nn.context import MixerContext
from ...nn.gathered import band_indices, gather_keys
from ...registry import MIXERS
from ..base import Mixer, Supports

SELF_SCORE = -1e5      # the paper's self-attention penalty (Reformer / HF use -1e5 in fp32)
CHUNKINGS = ("auto", "global", "bucket")


def lsh_hash(qk: Tensor, rotations: Tensor, n_buckets: int) -> Tensor:
    """Angular LSH: qk (B, h, n, e), rotations (h, e, r, b/2) → buckets (B, h, r, n)."""
    B, h, n, _ = qk.shape
    if n_buckets == 1:
        return torch.zeros(B, h, rotations.shape[2], n, dtype=torch.long, device=qk.device)
    rot = torch.einsum("bhne,herk->bhrnk", qk.detach().float(), rotations.float())
    return torch.cat([rot, -rot], -1).argmax(-1)


def sorted_structure(buckets: Tensor, n_groups: int, chunk: int, mode: str):
    """Sort each round by (bucket, position). Returns, in sorted order (B, h, r, n): the
    permutation ``order`` (original index of each slot), the group id (0 for global chunking,
    the bucket otherwise) and the chunk id (slot // c, or rank inside the bucket // c)."""
    n = buckets.shape[-1]
    ar = torch.arange(n, device=buckets.device)
    order = torch.argsort(buckets * n + ar, dim=-1)
    sb = torch.gather(buckets, -1, order)
    if mode == "global":
        return order, torch.zeros_like(sb), (ar // chunk).expand_as(sb)
    counts = torch.zeros(*buckets.shape[:-1], n_groups, dtype=torch.long, device=buckets.device)
    counts.scatter_add_(-1, buckets, torch.ones_like(buckets))
    starts = counts.cumsum(-1) - counts                                # first slot of each bucket
    local = ar - torch.gather(starts, -1, sb)
    return order, sb, local // chunk


def combine_rounds(out: Tensor, lse: Tensor) -> Tensor:
    """out (B, h, r, n, e), lse (B, h, r, n) → Σ_r softmax_r(lse) out_r (eq. 6-7)."""
    return (torch.softmax(lse, dim=2).unsqueeze(-1).to(out.dtype) * out).sum(2)


@MIXERS.register(
    "lsh", paper="Reformer: The Efficient Transformer (Kitaev et al., 2020)",
    equation="§2 eq. 3-7: h(x) = argmax([xR; −xR]); o_i = Σ_{j∈P_i} exp(q_i·k_j − z(i,P_i)) v_j, "
             "k_j = q_j/‖q_j‖, P_i = sorted chunk (and neighbours) of i; rounds combined by z",
    complexity=("O(r n (log n + c d))", "O(r n c)"),
    test="tests/papers/test_attention_lsh.py::test_lsh_one_bucket_equals_shared_qk_full_attention",
    tiny={"heads": 2, "buckets": 4, "rounds": 2, "chunk": 2})
class LSHAttention(Mixer):
    """Reformer LSH self-attention: shared QK, multi-round angular hashing, sorted chunks."""

    supports = Supports(causal=True, bidirectional=True, cross=False, cache=True,
                        positions=frozenset({"input"}))

    def __init__(self, d_model: int, heads: int = 4, head_dim: int | None = None,
                 buckets: int = 8, rounds: int = 2, chunk: int = 32, chunks_before: int = 1,
                 chunks_after: int = 0, chunking: str = "auto", seed: int = 0,
                 bias: bool = False, causal: bool = False):
        super().__init__()
        if head_dim is None:
            if d_model % heads:
                raise ConfigError("mixer.heads", heads,
                                  why=f"d_model={d_model} is not divisible by heads={heads}")
            head_dim = d_model // heads
        if buckets < 1 or (buckets > 1 and buckets % 2):
            raise ConfigError("mixer.buckets", buckets, why="buckets must be 1 or an even number "
                              "(angular LSH uses b/2 rotations and their negatives)")
        if rounds < 1 or chunk < 1 or chunks_before < 0 or chunks_after < 0:
            raise ConfigError("mixer", {"rounds": rounds, "chunk": chunk},
                              why="rounds and chunk must be >= 1, chunks_before/after >= 0")
        if chunking not in CHUNKINGS:
            raise ConfigError("mixer.chunking", chunking, CHUNKINGS)
        if causal and chunking == "global":
            raise ConfigError("mixer.chunking", chunking, ["auto", "bucket"],
                              why="global chunking leaks future tokens through the sort; a causal "
                                  "lsh needs chunking='bucket'")
        self.heads, self.head_dim, self.n_buckets, self.rounds = heads, head_dim, buckets, rounds
        self.chunk, self.before, self.after, self.chunking = chunk, chunks_before, chunks_after, chunking
        self.qk_proj = nn.Linear(d_model, heads * head_dim, bias=bias)   # shared Q = K
        self.v_proj = nn.Linear(d_model, heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(heads * head_dim, d_model, bias=bias)
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("rotations", torch.randn(heads, head_dim, rounds, max(buckets // 2, 1),
                                                      generator=g))

    # -- pieces ---------------------------------------------------------------------------
    def _split(self, t: Tensor) -> Tensor:
        B, n, _ = t.shape
        return t.view(B, n, self.heads, self.head_dim).transpose(1, 2)   # (B, h, n, e)

    def _mode(self, causal: bool) -> str:
        if self.chunking == "auto":
            return "bucket" if causal else "global"
        if causal and self.chunking == "global":
            raise ConfigError("mixer.chunking", "global", ["auto", "bucket"],
                              why="global chunking has no causal form")
        return self.chunking

    def _buckets(self, qk: Tensor, valid: Tensor) -> Tensor:
        b = lsh_hash(qk, self.rotations, self.n_buckets)                  # (B, h, r, n)
        return b.masked_fill(~valid[:, None, None, :], self.n_buckets)    # padding: own bucket

    @staticmethod
    def _keys(qk: Tensor) -> Tensor:
        # k_j = q_j/‖q_j‖ (eq. 3), written as HF does: x·rsqrt(mean x² + 1e-6)/√e
        return qk * torch.rsqrt(qk.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(qk.dtype) \
            / math.sqrt(qk.shape[-1])

    def init_state(self, batch: int, device=None, dtype=None):
        return {}

    def forward(self, x: Tensor, ctx: MixerContext, state=None):
        B, n, _ = x.shape
        qk, v = self._split(self.qk_proj(x)), self._split(self.v_proj(x))
        past = state is not None and "qk" in state
        if past:
            qk = torch.cat([state["qk"], qk], 2)
            v = torch.cat([state["v"], v], 2)
        new_state = None if state is None else {"qk": qk, "v": v}
        n_k = qk.shape[2]
        kpm = ctx.key_padding_mask
        if kpm is not None and kpm.shape[1] != n_k:
            raise ValueError(f"key_padding_mask covers {kpm.shape[1]} keys, attention has {n_k}")
        valid = torch.ones(B, n_k, dtype=torch.bool, device=x.device) if kpm is None else kpm.bool()
        mode = self._mode(ctx.causal)
        if past:
            y = self.attend_dense(qk, v, valid, ctx.causal, mode, n)
        else:
            y = self.attend_sorted(qk, v, valid, ctx.causal, mode)
        return self.o_proj(y.transpose(1, 2).reshape(B, n, -1).to(x.dtype)), new_state

    # -- the two forms --------------------------------------------------------------------
    def attend_sorted(self, qk: Tensor, v: Tensor, valid: Tensor, causal: bool, mode: str) -> Tensor:
        """Chunked form: sort, gather each query's window of sorted neighbours, unsort."""
        B, h, n, e = qk.shape
        r, c = self.rounds, self.chunk
        order, grp, cid = sorted_structure(self._buckets(qk, valid), self.n_buckets + 1, c, mode)
        order, grp, cid = (t.reshape(B, h * r, n) for t in (order, grp, cid))   # fold rounds

        def srt(t):                                        # (B, h, n, e) -> (B, h·r, n, e) sorted
            t = t.unsqueeze(2).expand(B, h, r, n, e).reshape(B, h * r, n, e)
            return torch.gather(t, 2, order.unsqueeze(-1).expand(B, h * r, n, e))
        qs, ks, vs = srt(qk), srt(self._keys(qk)), srt(v)
        lo = c * (self.before + 1) - 1
        hi = 0 if causal else c * (self.after + 1) - 1     # causal: later slots are later tokens
        widx, inwin = band_indices(n, lo, hi, qk.device)    # (n, W)
        kg, vg = gather_keys(ks, widx[None, None]), gather_keys(vs, widx[None, None])
        at = lambda t: t[:, :, widx]                        # (B, h·r, n) -> (B, h·r, n, W)
        vs_valid = torch.gather(valid.unsqueeze(1).expand(B, h * r, n), 2, order)
        dc = at(cid) - cid.unsqueeze(-1)
        allowed = inwin & (at(grp) == grp.unsqueeze(-1)) & (dc >= -self.before) & \
            (dc <= self.after) & at(vs_valid)
        if causal:
            allowed &= at(order) <= order.unsqueeze(-1)
        is_self = inwin & (at(order) == order.unsqueeze(-1))
        s = torch.einsum("bhqe,bhqwe->bhqw", qs.float(), kg.float())    # (B, h·r, n, W)
        s = s.masked_fill(~allowed, float("-inf")).masked_fill(is_self, SELF_SCORE)
        lse = torch.logsumexp(s, -1)                                     # never empty: self
        o = torch.einsum("bhqw,bhqwe->bhqe", torch.exp(s - lse.unsqueeze(-1)).to(vg.dtype), vg)
        inv = torch.argsort(order, -1)                                   # unsort
        o = torch.gather(o, 2, inv.unsqueeze(-1).expand_as(o)).view(B, h, r, n, e)
        lse = torch.gather(lse, 2, inv).view(B, h, r, n)
        return combine_rounds(o, lse)

    def attend_dense(self, qk: Tensor, v: Tensor, valid: Tensor, causal: bool, mode: str,
                     n_q: int) -> Tensor:
        """Dense form for the last n_q tokens (decode steps; the slow reference): the same
        chunk rule written as an (n_q × n_k) mask over the whole sequence."""
        B, h, n, e = qk.shape
        order, grp, cid = sorted_structure(self._buckets(qk, valid), self.n_buckets + 1,
                                           self.chunk, mode)
        inv = torch.argsort(order, -1)                                   # slot of each token
        grp, cid = torch.gather(grp, -1, inv), torch.gather(cid, -1, inv)  # (B, h, r, n) orig
        i = torch.arange(n - n_q, n, device=qk.device)
        j = torch.arange(n, device=qk.device)
        dc = cid[..., None, :] - cid[..., n - n_q:, None]                 # (B, h, r, n_q, n)
        allowed = (grp[..., None, :] == grp[..., n - n_q:, None]) & (dc >= -self.before) & \
            (dc <= self.after) & valid[:, None, None, None, :]
        if causal:
            allowed &= j <= i[:, None]
        is_self = (j == i[:, None]).expand_as(allowed)
        s = torch.matmul(qk[:, :, n - n_q:].float(), self._keys(qk).float().transpose(-1, -2))
        s = s.unsqueeze(2).expand_as(allowed).masked_fill(~allowed, float("-inf")).masked_fill(is_self, SELF_SCORE)
        lse = torch.logsumexp(s, -1)                                     # (B, h, r, n_q)
        o = torch.matmul(torch.exp(s - lse.unsqueeze(-1)).to(v.dtype), v.unsqueeze(2))
        return combine_rounds(o, lse)
