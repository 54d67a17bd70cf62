"""ELECTRA: a small masked-LM generator corrupts the input, the model (the discriminator)
tells every token whether it was replaced.

Paper: ELECTRA: Pre-training Text Encoders as Discriminators Rather Than Generators (Clark et
al., ICLR 2020), §2, eq. 1:
    m_i ~ unif{1, n} for k = ⌈0.15 n⌉ positions,  x^masked = REPLACE(x, m, [MASK])
    x̂_i ~ p_G(x_i | x^masked) for i ∈ m,           x^corrupt = REPLACE(x, m, x̂)
    L_MLM  = E[Σ_{i∈m} −log p_G(x_i | x^masked)]
    L_Disc = E[Σ_t −1(x^corrupt_t = x_t) log D(x^corrupt, t) − 1(x^corrupt_t ≠ x_t) log(1 − D)]
    min_{θ_G, θ_D} L_MLM + λ L_Disc,  λ = 50.
A sampled token equal to the original counts as "original" (label 0). No gradient flows
through the sampling. §3.2: generator and discriminator share the token embeddings; the
generator is smaller (best at 1/4 to 1/2 of the discriminator's width; default 1/4 here).
After pre-training the generator is thrown away and the discriminator is fine-tuned.

Here: the discriminator is the run's ``bert`` model (its final hidden states → dense, GELU,
dense → one logit per token); the generator is a ``bert`` of the same depth with width
``generator_size`` × d_model (heads scaled alike), reading the shared token table through a
d → d_G projection and predicting through d_G → d and the tied table (ELECTRA's
``embedding_size`` mechanism). Its position table is its own (the paper shares it too: a
simplification). Positions are chosen independently with probability 0.15 (BERT's sampler).
``loss`` in the metrics is the generator's MLM cross-entropy; ``disc_loss`` the mean binary
cross-entropy per token. Complexity: one generator + one discriminator pass, O(n V) for the
generator's softmax at the chosen positions.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import MODELS, OBJECTIVES, split_spec
from .base import IGNORE, Objective, aux_of, exact_sum, unwrap
from .mlm import MaskedLM


class SharedInput(nn.Module):
    """The discriminator's token table, projected to the generator's width: (B, n) → (B, n, d_G)."""

    def __init__(self, table: nn.Embedding, d_out: int):
        super().__init__()
        self.table = table
        d = table.weight.shape[1]
        self.proj = nn.Linear(d, d_out) if d != d_out else nn.Identity()

    def forward(self, ids: Tensor) -> Tensor:
        return self.proj(self.table(ids))


class SharedOutput(nn.Module):
    """(…, d_G) → (…, V) through d_G → d and the shared (tied) token table, with its own bias."""

    def __init__(self, table: nn.Embedding, d_in: int):
        super().__init__()
        self.table = table
        V, d = table.weight.shape
        self.proj = nn.Linear(d_in, d) if d != d_in else nn.Identity()
        self.bias = nn.Parameter(torch.zeros(V))

    def forward(self, h: Tensor) -> Tensor:
        return F.linear(self.proj(h), self.table.weight, self.bias)


def generator_config(cfg, size: float):
    """The generator's ModelConfig: the discriminator's with width and heads × ``size``."""
    g = copy.deepcopy(cfg)
    d_g = max(1, int(round(cfg.d_model * size)))
    name, kw = split_spec(cfg.mixer, "model.mixer")
    heads = max(1, int(round(int(kw.get("heads", 4)) * size)))
    while d_g % heads:
        heads -= 1
    g.d_model, g.tie_embeddings, g.n_segments = d_g, False, 0
    g.mixer = {"name": name, **{k: v for k, v in kw.items() if k != "head_dim"}, "heads": heads}
    return g


@OBJECTIVES.register(
    "electra", paper="ELECTRA: Pre-training Text Encoders as Discriminators Rather Than "
                     "Generators (Clark et al., 2020)",
    equation="eq. 1: min L_MLM(x, θ_G) + λ L_Disc(x, θ_D), λ = 50; D predicts "
             "x^corrupt_t ≠ x_t for every t; generator 1/4 width, shared token embeddings",
    complexity=("O(n V) generator + O(n d) discriminator head", "O(n V)"),
    test="tests/papers/test_objectives_pretrain.py::"
         "test_electra_replaced_token_detection_and_joint_loss")
class Electra(Objective):
    """Replaced-token detection with a jointly trained small MLM generator (λ = 50)."""

    data_format = "mlm"
    specials = ("[MASK]",)

    def __init__(self, generator_size: float | None = 0.25, disc_weight: float = 50.0,
                 mask_prob: float = 0.15):
        if generator_size is None or isinstance(generator_size, bool) \
                or not isinstance(generator_size, (int, float)) or not 0 < generator_size <= 1:
            raise ConfigError("objective.generator_size", generator_size,
                              why="ELECTRA needs a generator width as a fraction of d_model in "
                                  "(0, 1] (the paper: 0.25)")
        if not float(disc_weight) > 0:
            raise ConfigError("objective.disc_weight", disc_weight, why="must be > 0 (paper: 50)")
        self.generator_size, self.disc_weight = float(generator_size), float(disc_weight)
        # ELECTRA replaces every chosen position by [MASK] (no 10% random / 10% kept)
        self.masker = MaskedLM(mask_prob, mask_token=1.0, random_token=0.0)

    def setup(self, vocab_size, special_ids):
        super().setup(vocab_size, special_ids)
        self.masker.setup(vocab_size, special_ids)
        return self

    def check_model(self, model) -> None:
        import inspect
        if getattr(type(model), "has_decoder", False) or getattr(model, "causal", True) \
                or not hasattr(model, "embed") or getattr(model, "cfg", None) is None \
                or "predict" not in inspect.signature(model.forward).parameters:
            raise ConfigError("objective", "electra",
                              why=f"electra's discriminator is a bidirectional encoder "
                                  f"(model.arch=bert); this one is {type(model).__name__}")

    def attach(self, model) -> None:
        cfg = model.cfg
        gen = MODELS.get(cfg.arch, "model.arch").obj(generator_config(cfg, self.generator_size))
        d_g = gen.cfg.d_model
        gen.embed = SharedInput(model.embed, d_g)            # shared token embeddings
        gen.head = SharedOutput(model.embed, d_g)
        d = cfg.d_model
        head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))
        for m in head:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, cfg.init_std)
                nn.init.zeros_(m.bias)
        self.add_modules(model, generator=gen, discriminator_head=head)

    def corrupt(self, model, ids: Tensor, attention_mask=None, generator=None) -> dict:
        """The generator's half: masked input, its MLM labels and logits, the sampled
        corruption and the replaced-token labels."""
        parts = unwrap(model).objective_modules
        masked, mlm_labels = self.masker.mask_tokens(ids, generator=generator)
        chosen = mlm_labels != IGNORE
        g = parts["generator"](masked, attention_mask=attention_mask, predict=chosen)
        g_logits = g.logits.float()                                  # (N_chosen, V)
        with torch.no_grad():
            sample = torch.multinomial(g_logits.softmax(-1), 1, generator=generator).squeeze(-1)
        corrupted = ids.clone()
        corrupted[chosen] = sample.to(ids.dtype)
        return {"masked": masked, "mlm_labels": mlm_labels, "chosen": chosen,
                "gen_logits": g_logits, "gen_aux": aux_of(g), "corrupted": corrupted,
                "replaced": (corrupted != ids)}

    def discriminate(self, model, corrupted: Tensor, attention_mask=None):
        """(per-token logits (B, n), model output) of D on the corrupted input."""
        out = model(corrupted, attention_mask=attention_mask)
        head = unwrap(model).objective_modules["discriminator_head"]
        return head(out.hidden).squeeze(-1).float(), out

    def __call__(self, model, batch):
        ids, am = batch["input_ids"], batch.get("attention_mask")
        c = self.corrupt(model, ids, am)
        targets = c["mlm_labels"][c["chosen"]]
        ce = F.cross_entropy(c["gen_logits"], targets, reduction="none")
        n_mlm = targets.numel()
        d_logits, out = self.discriminate(model, c["corrupted"], am)
        real = torch.ones_like(ids, dtype=torch.bool) if am is None else am.bool()
        y = c["replaced"].float()
        bce = F.binary_cross_entropy_with_logits(d_logits, y, reduction="none")[real]
        n_tok = bce.numel()
        aux = aux_of(out) + c["gen_aux"]
        loss = ce.sum() / max(n_mlm, 1) + self.disc_weight * bce.mean() + aux
        hit = ((d_logits > 0) == c["replaced"])[real]
        metrics = {"loss": (exact_sum(ce), n_mlm),
                   "accuracy": ((c["gen_logits"].argmax(-1) == targets).sum(), n_mlm),
                   "disc_loss": (exact_sum(bce), n_tok),
                   "disc_accuracy": (hit.sum(), n_tok),
                   "replaced_fraction": (c["replaced"][real].sum(), n_tok),
                   "aux": (aux.detach(), 1)}
        return loss, metrics
