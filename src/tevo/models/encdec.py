"""Encoder–decoder Transformer.

Paper: Attention Is All You Need (Vaswani et al., 2017), §3.1–3.4: N encoder blocks (self-attn,
FFN) and N decoder blocks (masked self-attn, cross-attn over the encoder output, FFN), shared
source/target embeddings tied to the pre-softmax projection (§3.4), embeddings scaled by √d,
sinusoidal positions; greedy and beam-search decoding (§6.1: beam 4, length penalty α = 0.6).
Complexity: encoder L·O(m² d), decoder L·O(n² d + n m d).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..nn.context import MixerContext
from ..registry import MODELS, POSITIONS
from .block import BlockStack
from .common import (ModelOutput, build_norm, build_position, check_ids, extend_mask, mixer_dims,
                     init_weights, token_positions)


def _decoder_layout(layout: str) -> str:
    toks = layout.split()
    if "c" in toks:
        return layout
    i = toks.index("a") + 1 if "a" in toks else 0
    return " ".join(toks[:i] + ["c"] + toks[i:])


@MODELS.register(
    "transformer", paper="Attention Is All You Need (Vaswani et al., 2017)",
    equation="§3.1: enc = N×[self-attn, FFN]; dec = N×[masked self-attn, cross-attn, FFN]; "
             "§3.4 shared embeddings × √d",
    complexity=("L·O(m² d + n² d + n m d)", "L·O(m² + n m)"),
    test="tests/papers/test_models.py::test_transformer_learns_reverse_and_beam_matches_greedy")
class EncoderDecoder(nn.Module):
    """Vanilla Transformer with shared embeddings, cross-attention, greedy and beam search."""

    default_causal = True
    has_decoder = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.embed = nn.Embedding(cfg.vocab_size, d)
        self.pos = build_position(cfg)
        # the decoder's own position encoding, when it differs from the encoder's (T5: causal
        # relative buckets with a second table); None = shared. Spec: model.extra.dec_position
        dec_spec = (cfg.extra or {}).get("dec_position")
        self.dec_pos = None if dec_spec is None else POSITIONS.build(
            dec_spec, "model.extra.dec_position", **mixer_dims(cfg))
        self.drop = nn.Dropout(cfg.dropout)
        enc_layout = " ".join(t for t in cfg.layout.split() if t != "c")
        self.encoder = BlockStack(cfg, causal=False, layout=enc_layout)
        self.decoder = BlockStack(cfg, causal=True, n_layers=cfg.n_dec_layers or cfg.n_layers,
                                  layout=_decoder_layout(cfg.layout))
        use_final = cfg.final_norm if cfg.final_norm is not None else self.encoder.final_norm
        self.enc_norm = build_norm(cfg) if use_final else None
        self.dec_norm = build_norm(cfg) if use_final else None
        self.head = nn.Linear(d, cfg.vocab_size, bias=cfg.head_bias)
        init_weights(self, cfg, cfg.n_layers + (cfg.n_dec_layers or cfg.n_layers))
        nn.init.normal_(self.embed.weight, 0.0, d ** -0.5)  # so that √d · E has unit scale
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        # §3.4: embeddings × √d, unless the position encoding already does it (sinusoidal)
        self.scale = 1.0 if getattr(self.pos, "scale_input", False) else math.sqrt(d)

    def _embed(self, ids: Tensor, positions: Tensor, pos=None) -> Tensor:
        pos = self.pos if pos is None else pos
        x = self.embed(ids) * self.scale
        if "input" in pos.hooks:
            x = pos.embed(x, positions)
        return self.drop(x)

    def encode(self, src_ids: Tensor, src_mask: Tensor | None = None) -> Tensor:
        check_ids(src_ids, self.cfg.vocab_size, "src_ids")
        B, m = src_ids.shape
        pos = torch.arange(m, device=src_ids.device).unsqueeze(0).expand(B, m)
        mask = None if src_mask is None else src_mask.bool()
        ctx = MixerContext(causal=False, key_padding_mask=mask, positions=pos, pos=self.pos)
        h, _ = self.encoder(self._embed(src_ids, pos), ctx)
        return self.enc_norm(h) if self.enc_norm is not None else h

    def init_state(self, batch: int, device=None, dtype=None) -> dict:
        return {"layers": self.decoder.init_state(batch, device, dtype), "mask": None, "length": 0}

    def decode(self, tgt_ids: Tensor, memory: Tensor, src_mask: Tensor | None = None,
               tgt_mask: Tensor | None = None, state: dict | None = None) -> ModelOutput:
        check_ids(tgt_ids, self.cfg.vocab_size, "tgt_ids")
        B, n = tgt_ids.shape
        full = extend_mask(state, tgt_mask, B, n, tgt_ids.device)
        pos = token_positions(state, full, B, n, tgt_ids.device)
        dpos = self.pos if self.dec_pos is None else self.dec_pos
        ctx = MixerContext(causal=True, key_padding_mask=full, positions=pos, pos=dpos,
                           context=memory, context_mask=None if src_mask is None else src_mask.bool())
        h, st = self.decoder(self._embed(tgt_ids, pos, dpos), ctx, None if state is None else state["layers"])
        if self.dec_norm is not None:
            h = self.dec_norm(h)
        new_state = None if state is None else {"layers": st, "mask": full,
                                                 "length": state.get("length", 0) + n}
        return ModelOutput(self.head(h), new_state, ctx.aux_loss(), h, {"aux": ctx.aux})

    def forward(self, src_ids: Tensor, tgt_ids: Tensor, src_mask: Tensor | None = None,
                tgt_mask: Tensor | None = None) -> ModelOutput:
        return self.decode(tgt_ids, self.encode(src_ids, src_mask), src_mask, tgt_mask)

    # -- decoding -----------------------------------------------------------------------------
    @torch.no_grad()
    def greedy(self, src_ids: Tensor, bos: int, eos: int | None, max_len: int,
               src_mask: Tensor | None = None) -> Tensor:
        """Greedy decoding with the decoder's KV cache. Returns (B, ≤max_len) ids after BOS."""
        B = src_ids.shape[0]
        memory = self.encode(src_ids, src_mask)
        state = self.init_state(B, src_ids.device)
        tok = torch.full((B, 1), bos, dtype=torch.long, device=src_ids.device)
        out, done = [], torch.zeros(B, dtype=torch.bool, device=src_ids.device)
        for _ in range(max_len):
            o = self.decode(tok, memory, src_mask, state=state)
            state = o.state
            tok = o.logits[:, -1].argmax(-1, keepdim=True)
            if eos is not None:
                tok = torch.where(done.unsqueeze(1), torch.full_like(tok, eos), tok)
                done |= tok.squeeze(1) == eos
            out.append(tok)
            if eos is not None and bool(done.all()):
                break
        return torch.cat(out, 1)

    @torch.no_grad()
    def beam_search(self, src_ids: Tensor, bos: int, eos: int | None, max_len: int,
                    beam: int = 4, alpha: float = 0.6, src_mask: Tensor | None = None) -> Tensor:
        """Beam search with GNMT length penalty ((5+|y|)/6)^α (the paper's §6.1 setting).
        Runs one source at a time for clarity; returns the best hypothesis per source,
        right-padded with ``eos`` (or 0)."""
        results = []
        for b in range(src_ids.shape[0]):
            src = src_ids[b:b + 1]
            sm = None if src_mask is None else src_mask[b:b + 1]
            results.append(self._beam_one(src, sm, bos, eos, max_len, beam, alpha))
        width = max(len(r) for r in results)
        pad = eos if eos is not None else 0
        out = torch.full((len(results), width), pad, dtype=torch.long, device=src_ids.device)
        for i, r in enumerate(results):
            out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        return out

    def _beam_one(self, src, src_mask, bos, eos, max_len, beam, alpha):
        dev = src.device
        memory = self.encode(src, src_mask)
        hyps = [([], 0.0, self.init_state(1, dev))]     # (tokens, log-prob, state)
        finished = []

        def lp(n):
            return ((5 + n) / 6) ** alpha
        for _ in range(max_len):
            cand = []
            for toks, score, st in hyps:
                last = torch.tensor([[toks[-1] if toks else bos]], device=dev)
                o = self.decode(last, memory, src_mask, state=st)
                logp = o.logits[0, -1].float().log_softmax(-1)
                top = logp.topk(beam)
                for v, i in zip(top.values.tolist(), top.indices.tolist()):
                    cand.append((toks + [i], score + v, o.state))
            cand.sort(key=lambda c: c[1] / lp(len(c[0])), reverse=True)
            hyps = []
            for toks, score, st in cand:
                if eos is not None and toks[-1] == eos:
                    finished.append((toks, score / lp(len(toks))))
                else:
                    hyps.append((toks, score, st))
                if len(hyps) == beam:
                    break
            if not hyps or (len(finished) >= beam):
                break
        finished += [(t, s / lp(len(t))) for t, s, _ in hyps]
        return max(finished, key=lambda f: f[1])[0]
