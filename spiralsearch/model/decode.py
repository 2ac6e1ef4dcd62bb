"""Incremental decoding with key/value caches at every resolution (docs/design.md §1.7).

The full forward is causal at every level, so it can be run one token at a time:

- pre and post blocks: ordinary per-layer KV caches over token positions;
- loop iteration t (chunk g, offset w, shift s): token i is in chunk j = (i + w) // g, whose
  last token is e_j = (j+1)g - w - 1. Slot k of chunk j lands at position jg - w + k + s >=
  e_j, so the level makes a new latent only when a chunk closes (token e_j arrives): pool
  the chunk's token states as Resampler.down does, run the shared core on that one latent
  with this iteration's own per-layer KV caches (the core sees a different sequence in
  every iteration), up-sample it to its g slot updates and keep them pending for the
  positions they land on; a position with no pending update reads zero;
- the topology (start and step) is position-wise, so it runs on the new positions alone;
  MeSH's slot buffer (n_slots, B, n, d) only ever holds the positions being fed.

A prompt of any length is fed in one call from empty caches (the prefill): the same code
with n positions instead of 1, where every chunk closed in the prompt is pooled and run
through the core at once. Each later call feeds one token, and at most one chunk per level
closes. Everything is preallocated for the final length, so caches never grow by cat.

There is no dropout in the model, so train and eval mode decode alike; everything runs
under torch.no_grad in the model's own dtype and on its device.

    tokens = model.generate(idx, 100)                                   # greedy
    tokens, logits = generate(model, idx, 100, return_logits=True)      # + per-step logits
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from spiralsearch.model.resample import Resampler, n_chunks
from spiralsearch.model.topology import Anchor, Mesh, Residual

if TYPE_CHECKING:
    from spiralsearch.model.transformer import SpiralFormer


class KVCache:
    """Keys and values of one attention layer, preallocated for `capacity` positions:
    k, v (B, H, capacity, head_dim); the first `length` positions are filled."""

    def __init__(self, batch: int, n_heads: int, head_dim: int, capacity: int,
                 dtype: torch.dtype, device: torch.device):
        self.k = torch.zeros(batch, n_heads, capacity, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new k, v (B, H, n, hd); return all keys and values so far (B, H, length, hd)."""
        n, end = k.shape[2], self.length + k.shape[2]
        if n > 1 and self.length:
            raise ValueError("several positions can only go into an empty cache (prefill)")
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


def slot_updates(rs: Resampler, update: torch.Tensor, zhat: torch.Tensor) -> torch.Tensor:
    """Chunk-level `update` (B, n, d) -> its n*g slot updates (B, n*g, d), as Resampler.up
    before the shift: `allocate` weights g * softmax(allocator(zhat_j)), `repeat` copies."""
    if rs.allocator is None:
        u = update.unsqueeze(2).expand(-1, -1, rs.chunk, -1)
    else:
        beta = rs.allocator(zhat).softmax(-1) * rs.chunk  # (B, n, g)
        u = beta.unsqueeze(-1) * update.unsqueeze(2)
    return u.reshape(u.shape[0], -1, u.shape[-1])


class _Level:
    """Decode state of one loop iteration: token states and scores in padded chunk slots
    (slot w + i holds token i, as Resampler._to_chunks pads), the core's KV caches over
    chunk latents, and the update waiting for each token position."""

    def __init__(self, model: SpiralFormer, rs: Resampler, rope, batch: int, capacity: int):
        self.rs, self.model = rs, model
        self.token_rope = rope  # (cos, sin) of token positions; latents index into it
        dtype, device = rope[0].dtype, rope[0].device
        g, w = rs.chunk, rs.offset
        self.n_max = n_chunks(capacity, g, w)  # latents at the final length
        d = model.cfg.d_model
        self.h = torch.zeros(batch, self.n_max * g, d, dtype=dtype, device=device)
        self.scores = torch.zeros(batch, self.n_max * g, dtype=dtype, device=device)
        # real (non-padding) slots of each chunk; only chunk 0 has padding (its first w)
        self.real = (torch.arange(self.n_max * g, device=device) >= w).view(self.n_max, g)
        cfg = model.cfg
        self.caches = [KVCache(batch, cfg.n_heads, cfg.head_dim, self.n_max, dtype, device)
                       for _ in model.core]
        # pending[:, p] is the update landing at position p; the last slot of the last
        # chunk lands at n_max*g - w - 1 + s
        self.pending = torch.zeros(batch, self.n_max * g - w + rs.shift, d, dtype=dtype,
                                   device=device)
        self.closed = 0  # chunks closed (pooled and run through the core) so far

    def absorb(self, h: torch.Tensor, pos: int) -> torch.Tensor | None:
        """Take token states h (B, n, d) at positions pos..pos+n-1; run the core on every
        chunk they close and store those chunks' slot updates in `pending`. Returns the core
        output of the newly closed chunks (B, n_closed, d), or None if none closed."""
        rs, g, w = self.rs, self.rs.chunk, self.rs.offset
        n = h.shape[1]
        self.h[:, w + pos:w + pos + n] = h
        if rs.scorer is not None:  # position-wise, so scored as the tokens arrive
            self.scores[:, w + pos:w + pos + n] = rs.scorer(h).squeeze(-1)
        j0, j1 = self.closed, (pos + n + w) // g  # chunk j is closed once e_j <= pos + n - 1
        if j1 == j0:
            return None
        z = self._pool(j0, j1)
        zhat = z
        rope = self._rope(j0, j1)
        for blk, cache in zip(self.model.core, self.caches, strict=True):
            zhat = blk.forward_cached(zhat, rope, cache)
        update = zhat - z if isinstance(self.model.topology, Residual) else zhat
        start = j0 * g - w + rs.shift  # where slot 0 of chunk j0 lands
        self.pending[:, start:start + (j1 - j0) * g] = slot_updates(rs, update, zhat)
        self.closed = j1
        return zhat

    def _pool(self, j0: int, j1: int) -> torch.Tensor:
        """Latents (B, j1 - j0, d) of closed chunks j0..j1-1, exactly as Resampler.down."""
        g = self.rs.chunk
        hc = self.h[:, j0 * g:j1 * g].unflatten(1, (j1 - j0, g))  # (B, n, g, d)
        if g == 1:
            return hc.squeeze(2)
        real = self.real[j0:j1]
        if self.rs.scorer is None:  # mean over the chunk's real tokens
            weights = real.to(hc.dtype) / real.sum(-1, keepdim=True).to(hc.dtype)
            weights = weights.expand(hc.shape[0], -1, -1)
        else:
            scores = self.scores[:, j0 * g:j1 * g].unflatten(1, (j1 - j0, g))
            weights = scores.masked_fill(~real, float("-inf")).softmax(-1)
        return (weights.unsqueeze(-1) * hc).sum(2)

    def _rope(self, j0: int, j1: int):
        """Rotary tables of latents j0..j1-1: position j, or e_j (coarse_positions='token');
        at g = 1 both are the token index."""
        rs, g, w = self.rs, self.rs.chunk, self.rs.offset
        cos, sin = self.token_rope  # latent positions never exceed token positions
        if g > 1 and rs.coarse_positions == "chunk":
            idx = slice(j0, j1)
        else:
            idx = slice(j0 * g + g - w - 1, j1 * g - w, g)
        return cos[idx], sin[idx]


def _topology_step(topology: nn.Module, t: int, state, h: torch.Tensor, u: torch.Tensor,
                   zhat: torch.Tensor | None, identity: bool):
    """Topology.step for the positions in h (B, n, d), given the up-sampled, shifted update
    u (B, n, d) that lands on them (what `rs.up` gives the full forward there)."""
    if isinstance(topology, Mesh):
        return topology.write_read(t + 1, state, h, u)
    if isinstance(topology, Anchor):
        return state + u, state
    if identity:  # Residual at g = 1, s = 0 returns the core output, as Residual.step
        return zhat, state
    return h + u, state


class Decoder:
    """Decoding state of one batch of B sequences up to `capacity` tokens: `feed` token ids
    and get their logits, as `model(all tokens so far)` would give at those positions."""

    def __init__(self, model: SpiralFormer, batch: int, capacity: int):
        cfg = model.cfg
        if capacity > cfg.max_seq_len:
            raise ValueError(f"{capacity} tokens exceed max_seq_len={cfg.max_seq_len}")
        self.model, self.capacity, self.length = model, capacity, 0
        dtype, device = model.wte.weight.dtype, model.wte.weight.device
        self.rope = model._rope(torch.arange(capacity, device=device), dtype)
        self.pre = [KVCache(batch, cfg.n_heads, cfg.head_dim, capacity, dtype, device)
                    for _ in model.pre]
        self.post = [KVCache(batch, cfg.n_heads, cfg.head_dim, capacity, dtype, device)
                     for _ in model.post]
        self.levels = [_Level(model, rs, self.rope, batch, capacity)
                       for rs in model.resamplers]

    @torch.no_grad()
    def feed(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, n, vocab) for the next n tokens idx (B, n); n > 1 only as the first
        call (the prompt)."""
        m, pos, n = self.model, self.length, idx.shape[1]
        if n > 1 and pos:  # one token per call after the prompt: one chunk closes at most
            raise ValueError("feed several tokens only as the first call (the prompt)")
        if pos + n > self.capacity:
            raise ValueError(f"{pos + n} tokens exceed this decoder's capacity {self.capacity}")
        emb = m.wte(idx)
        if m.cfg.embed_scale:
            emb = emb * math.sqrt(m.cfg.d_model)
        rope = self.rope[0][pos:pos + n], self.rope[1][pos:pos + n]
        h = emb
        for blk, cache in zip(m.pre, self.pre, strict=True):
            h = blk.forward_cached(h, rope, cache)
        h, state = m.topology.start(emb, h)
        for t, lvl in enumerate(self.levels):
            zhat = lvl.absorb(h, pos)
            h, state = _topology_step(m.topology, t, state, h, lvl.pending[:, pos:pos + n],
                                      zhat, lvl.rs.identity)
        for blk, cache in zip(m.post, self.post, strict=True):
            h = blk.forward_cached(h, rope, cache)
        self.length = pos + n
        return m.lm_head(m.ln_f(h))


def sample(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids (B, 1) from logits (B, vocab): argmax at temperature 0, else a draw
    from softmax(logits / temperature) over the top_k largest logits (all if None)."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)


@torch.no_grad()
def generate(model: SpiralFormer, idx: torch.Tensor, max_new_tokens: int,
             temperature: float = 0.0, top_k: int | None = None,
             generator: torch.Generator | None = None, *, prefill: bool = True,
             return_logits: bool = False):
    """Continue idx (B, L) by max_new_tokens tokens: (B, L + max_new_tokens) token ids.

    `prefill=False` feeds the prompt one token at a time (slower, same result).
    `return_logits=True` also returns the logits each new token was drawn from,
    (B, max_new_tokens, vocab): entry i is the full forward's logits at position L - 1 + i.
    """
    B, L = idx.shape
    if L < 1:
        raise ValueError("generate needs a prompt of at least one token")
    if max_new_tokens < 0 or temperature < 0 or (top_k is not None and top_k < 1):
        raise ValueError(f"need max_new_tokens >= 0, temperature >= 0, top_k >= 1; got "
                         f"{max_new_tokens}, {temperature}, {top_k}")
    if L + max_new_tokens > model.cfg.max_seq_len:
        raise ValueError(f"prompt {L} + max_new_tokens {max_new_tokens} exceeds "
                         f"max_seq_len={model.cfg.max_seq_len}")
    dec = Decoder(model, B, L + max_new_tokens)
    if prefill:
        last = dec.feed(idx)[:, -1]
    else:
        for i in range(L):
            last = dec.feed(idx[:, i:i + 1])[:, -1]
    tokens, steps = [idx], []
    for i in range(max_new_tokens):
        steps.append(last)
        tokens.append(sample(last, temperature, top_k, generator))
        if i + 1 < max_new_tokens:
            last = dec.feed(tokens[-1])[:, -1]
    out = torch.cat(tokens, dim=1)
    if not return_logits:
        return out
    empty = last.new_zeros(B, 0, last.shape[-1])
    return out, torch.stack(steps, dim=1) if steps else empty
