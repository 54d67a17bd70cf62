"""Optimus: a Transformer sentence VAE (Li et al., 2020, "Optimus: Organizing Sentences via
Pre-trained Modeling of a Latent Space").

Encoder (BERT, §3): the sentence's pooled feature h_[CLS] (first token, BERT's dense + tanh
pooler) or the mean of its final hidden states → μ, log σ² = W_μ h, W_σ h ∈ R^k; the
reparametrised latent z = μ + σ ⊙ ε, ε ~ N(0, I) (eval mode: z = μ).
Decoder (GPT-2, §4.1, Fig. 3), z injected in the paper's two ways (``inject``):
  memory:    h_Mem = W_M z, a vector every position attends to. Simplification: the paper
             splits W_M z into one key/value vector per layer; here W_M z is one prefix token
             (before the first token, position 0, no token positions moved) that every
             position attends to through the causal mask in every layer, and whose output is
             dropped.
  embedding: h'_emb = h_emb + W_E z, added to every token embedding.
  both:      the two together (the paper's choice).
The ELBO (eq. 4-6, β-annealed, free bits) is the ``optimus`` objective
(tevo.objectives.optimus); ``interpolate`` decodes greedily along the line between two
encoded sentences (§6.2).

Options (``model.extra``): latent_size k (int ≥ 1, default 32), inject (memory | embedding |
both), pool (first | mean). The encoder and the decoder are both built from the run's model
config (same width, depth, mixer); the encoder's unused MLM / NSP heads are dropped.
Complexity: encoder L·(mixer(n) + O(n d²)) + decoder L·(mixer(n+1) + O(n d²)) + O(d k).
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import ConfigError, InputError
from ..nn.context import MixerContext
from ..registry import MODELS
from .common import ModelOutput, check_ids, extra_options, init_weights, token_positions
from .encoder import Encoder
from .lm import LanguageModel

OPTIONS = {"latent_size": (32, int, 1, None), "inject": ("both", ("memory", "embedding", "both")),
           "pool": ("first", ("first", "mean"))}


def optimus_options(cfg: ModelConfig) -> dict:
    return extra_options(cfg, "optimus", OPTIONS)


def _sub_config(cfg: ModelConfig, causal: bool) -> ModelConfig:
    sub = copy.deepcopy(cfg)
    sub.causal, sub.extra = causal, {}
    return sub


@MODELS.register(
    "optimus", paper="Optimus: Organizing Sentences via Pre-trained Modeling of a Latent Space "
                     "(Li et al., 2020)",
    equation="§3-4: μ, log σ² = W h_[CLS]; z = μ + σ ε; decoder sees h_Mem = W_M z (attended "
             "memory) and h_emb + W_E z (every token embedding)",
    complexity=("encoder L·(mixer(n) + O(n d²)) + decoder L·(mixer(n+1) + O(n d²))",
                "L·O(n d) + O(d k)"),
    test="tests/papers/test_models_optimus.py::test_injection_changes_logits_in_each_mode",
    tiny={"extra": {"latent_size": 8}})
class Optimus(nn.Module):
    """BERT-style encoder → (μ, log σ²) → z → causal decoder conditioned on z."""

    default_causal = True
    has_decoder = False

    @classmethod
    def check_config(cls, cfg: ModelConfig) -> None:
        optimus_options(cfg)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        o = optimus_options(cfg)
        self.cfg, self.causal = cfg, True
        self.latent_size, self.inject, self.pool = o["latent_size"], o["inject"], o["pool"]
        d, k = cfg.d_model, self.latent_size
        self.encoder = Encoder(_sub_config(cfg, False))
        # the sentence VAE reads only the hidden states (and the pooler): no MLM / NSP heads
        self.encoder.mlm_transform = self.encoder.head = self.encoder.nsp = None
        if self.pool == "mean":
            self.encoder.pooler = None
        self.decoder = LanguageModel(_sub_config(cfg, True))
        self.to_latent = nn.Linear(d, 2 * k)                           # [μ; log σ²]
        self.w_mem = nn.Linear(k, d, bias=False) if self.inject != "embedding" else None
        self.w_emb = nn.Linear(k, d, bias=False) if self.inject != "memory" else None
        init_weights(self.to_latent, cfg, cfg.n_layers)
        # training calls seen by the optimus objective (its β schedule); saved with the weights
        self.register_buffer("kl_steps", torch.zeros((), dtype=torch.long))
        for m in (self.w_mem, self.w_emb):
            if m is not None:
                init_weights(m, cfg, cfg.n_layers)

    # -- encoder: q(z|x) -----------------------------------------------------------------------
    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None
               ) -> tuple[Tensor, Tensor]:
        """(μ, log σ²), each (B, k), from the encoder's pooled sentence feature."""
        h, _ = self.encoder.encode_hidden(input_ids, attention_mask)  # (B, n, d)
        if self.pool == "first":
            feat = torch.tanh(self.encoder.pooler(h[:, 0]))           # BERT's pooled [CLS]
        else:
            m = (torch.ones(h.shape[:2], device=h.device) if attention_mask is None
                 else attention_mask.to(h.dtype))
            feat = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
        mu, logvar = self.to_latent(feat).chunk(2, -1)
        return mu, logvar

    def sample_latent(self, mu: Tensor, logvar: Tensor) -> Tensor:
        """Reparametrisation z = μ + exp(½ log σ²) ε in training; μ in eval mode."""
        if not self.training:
            return mu
        return mu + (0.5 * logvar).exp() * torch.randn_like(mu)

    # -- decoder: p(x|z) -----------------------------------------------------------------------
    def decode(self, input_ids: Tensor, z: Tensor, attention_mask: Tensor | None = None,
               return_hidden: bool = False) -> ModelOutput:
        """Logits (B, n, V) of the causal decoder conditioned on z (B, k)."""
        dec = self.decoder
        check_ids(input_ids, self.cfg.vocab_size)
        B, n = input_ids.shape
        if z.shape != (B, self.latent_size):
            raise InputError(f"z must be ({B}, {self.latent_size}), got {tuple(z.shape)}")
        dev = input_ids.device
        mask = None if attention_mask is None else attention_mask.bool()
        positions = token_positions(None, mask, B, n, dev)          # (B, n)
        x = dec.embed_tokens(input_ids, positions)                  # (B, n, d)
        z = z.to(x.dtype)
        if self.w_emb is not None:
            x = x + self.w_emb(z)[:, None]                           # h_emb + W_E z
        p = 0
        if self.w_mem is not None:                                   # prefix memory W_M z
            x = torch.cat([self.w_mem(z)[:, None], x], 1)           # (B, 1+n, d)
            positions = torch.cat([positions.new_zeros(B, 1), positions], 1)
            if mask is not None:
                mask = torch.cat([mask.new_ones(B, 1), mask], 1)
            p = 1
        ctx = MixerContext(causal=True, key_padding_mask=mask, positions=positions, pos=dec.pos)
        h, _ = dec.blocks(x, ctx)
        h = h[:, p:]                                                 # drop the memory slot
        if dec.norm is not None:
            h = dec.norm(h)
        return ModelOutput(dec.head(h), None, ctx.aux_loss(), h if return_hidden else None,
                           {"aux": ctx.aux})

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                z: Tensor | None = None, return_hidden: bool = False, **_) -> ModelOutput:
        """Auto-encode input_ids (B, n): encode → z → decode the same tokens (teacher forced).
        ``z`` given: skip the encoder. ``extra`` holds mu, logvar (None when z is given), z."""
        mu = logvar = None
        if z is None:
            mu, logvar = self.encode(input_ids, attention_mask)
            z = self.sample_latent(mu, logvar)
        out = self.decode(input_ids, z, attention_mask, return_hidden)
        out.extra.update(mu=mu, logvar=logvar, z=z)
        return out

    @torch.no_grad()
    def greedy(self, z: Tensor, start_id: int, length: int) -> Tensor:
        """Greedy decode of ``length`` tokens after ``start_id`` from z (B, k): (B, 1+length).
        Recomputes the full prefix each step (O(length²) calls' worth of work; for short
        sentences)."""
        ids = torch.full((z.shape[0], 1), int(start_id), dtype=torch.long, device=z.device)
        for _ in range(length):
            nxt = self.decode(ids, z).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
        return ids


@torch.no_grad()
def interpolate(model: Optimus, ids_a: Tensor, ids_b: Tensor, steps: int,
                length: int | None = None, start_id: int | None = None, tokenizer=None):
    """Optimus §6.2: decode greedily along z_α = (1 − α) μ_a + α μ_b for ``steps`` values of α
    evenly spaced in [0, 1]. ids_a, ids_b: (n,) or (1, n) token ids. ``start_id``: the first
    token of every decode (default ids_a's first token); ``length``: tokens generated after it
    (default len(ids_a) − 1). Returns a list of (α, ids (1+length,)) or, with a ``tokenizer``
    (anything with ``decode(list[int])``), of (α, text)."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 2:
        raise ConfigError("steps", steps, why="expected an integer >= 2 (α = 0 and α = 1 at "
                                              "least)")
    a, b = ids_a.reshape(1, -1), ids_b.reshape(1, -1)
    length = a.shape[1] - 1 if length is None else int(length)
    start = int(a[0, 0]) if start_id is None else int(start_id)
    was = model.training
    model.eval()
    mu_a, _ = model.encode(a)
    mu_b, _ = model.encode(b)
    out = []
    for alpha in torch.linspace(0.0, 1.0, steps).tolist():
        z = (1.0 - alpha) * mu_a + alpha * mu_b
        ids = model.greedy(z, start, length)[0]
        out.append((alpha, tokenizer.decode(ids.tolist()) if tokenizer is not None else ids))
    model.train(was)
    return out
