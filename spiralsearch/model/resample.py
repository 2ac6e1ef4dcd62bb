"""Causal multi-resolution resampling for one loop iteration (docs/design.md §1.2).

Token i belongs to chunk j = floor((i + w) / g). The sequence is padded with w slots on the
left and up to a multiple of g on the right, then viewed as (B, L_t, g, d): every chunk is a
row, so pooling, allocation and shifting are single tensor ops (no loop over chunks).

Causality: chunk j's latent sees tokens up to its last token e_j = (j+1)g - w - 1. Token i of
chunk j has i >= e_j - (g-1), so after a right-shift of s = g - 1 the update lands at
position i + s >= e_j: no position ever receives a latent built from its future.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from spiralsearch.model.config import COARSE_POSITIONS, DOWNSAMPLE, SHIFT, UPSAMPLE  # noqa: F401


def n_chunks(seq_len: int, chunk: int, offset: int) -> int:
    """Number of chunk latents L_t = ceil((L + w) / g) for a sequence of L tokens."""
    return math.ceil((seq_len + offset) / chunk)


class Resampler(nn.Module):
    """Down-sampling to chunk latents, up-sampling back, and the causal right-shift of one
    iteration with chunk size `chunk` (g) and offset `offset` (w). At g = 1 it is the
    identity and owns no parameters."""

    def __init__(self, d_model: int, chunk: int, offset: int = 0, *, downsample: str = "score",
                 upsample: str = "allocate", shift: str = "minimal",
                 coarse_positions: str = "chunk", bias: bool = True):
        super().__init__()
        self.chunk, self.offset = chunk, offset
        self.downsample, self.upsample = downsample, upsample
        self.coarse_positions = coarse_positions
        self.shift = chunk - 1 if shift == "minimal" else chunk
        # A scorer's bias would cancel in the within-chunk softmax, so it has none.
        self.scorer = nn.Linear(d_model, 1, bias=False) if (
            chunk > 1 and downsample == "score") else None
        self.allocator = nn.Linear(d_model, chunk, bias=bias) if (
            chunk > 1 and upsample == "allocate") else None
        # Zero init: scoring starts as mean pooling, allocation starts as repeat.
        for m in (self.scorer, self.allocator):
            if m is not None:
                nn.init.zeros_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def identity(self) -> bool:
        """True when down/up-sampling and the shift are all identities (g = 1, s = 0)."""
        return self.chunk == 1 and self.shift == 0

    def _to_chunks(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, ...) -> (B, L_t, g, ...), zero padding w slots left and the tail right."""
        L = x.shape[1]
        right = n_chunks(L, self.chunk, self.offset) * self.chunk - L - self.offset
        pad = [0, 0] * (x.dim() - 2) + [self.offset, right]
        x = F.pad(x, pad)
        return x.view(x.shape[0], -1, self.chunk, *x.shape[2:])

    def _real_mask(self, seq_len: int, device: torch.device) -> torch.Tensor:
        """(L_t, g) bool: which chunk slots hold real tokens (not padding)."""
        idx = torch.arange(n_chunks(seq_len, self.chunk, self.offset) * self.chunk,
                           device=device) - self.offset
        return ((idx >= 0) & (idx < seq_len)).view(-1, self.chunk)

    def down(self, h: torch.Tensor) -> torch.Tensor:
        """Causal down-sampling: token states (B, L, d) -> chunk latents (B, L_t, d)."""
        if self.chunk == 1:
            return h
        real = self._real_mask(h.shape[1], h.device)  # (L_t, g)
        if self.scorer is None:  # mean over the chunk's real tokens
            weights = real.to(h.dtype) / real.sum(-1, keepdim=True).to(h.dtype)
            weights = weights.expand(h.shape[0], -1, -1)
        else:  # softmax of learned scores within the chunk; padding gets -inf
            scores = self._to_chunks(self.scorer(h).squeeze(-1))  # (B, L_t, g)
            weights = scores.masked_fill(~real, float("-inf")).softmax(-1)
        return (weights.unsqueeze(-1) * self._to_chunks(h)).sum(2)

    def up(self, update: torch.Tensor, zhat: torch.Tensor, seq_len: int) -> torch.Tensor:
        """Up-sample chunk-level `update` (B, L_t, d) to tokens and right-shift by s.

        `allocate` splits each chunk's update over its g slots with weights g * softmax(W zhat_j),
        computed from the core output zhat; `repeat` gives every slot the whole update.
        Returns (B, seq_len, d); the first s positions receive zeros.
        """
        if self.identity:
            return update
        if self.allocator is None:
            u = update.unsqueeze(2).expand(-1, -1, self.chunk, -1)
        else:
            beta = self.allocator(zhat).softmax(-1) * self.chunk  # (B, L_t, g)
            u = beta.unsqueeze(-1) * update.unsqueeze(2)
        u = u.reshape(u.shape[0], -1, u.shape[-1])  # token slots, w padding slots in front
        # Shifted output position p reads padded slot p + w - s; pad zeros in front so the
        # first s positions read nothing.
        u = F.pad(u, [0, 0, self.shift - self.offset, 0])
        return u[:, :seq_len]

    def positions(self, seq_len: int, device: torch.device) -> torch.Tensor:
        """Rotary positions of the chunk latents: chunk index j, or (coarse_positions='token')
        the token index of the chunk's last real token. Shape (L_t,), int64."""
        L_t = n_chunks(seq_len, self.chunk, self.offset)
        j = torch.arange(L_t, device=device)
        if self.chunk == 1 or self.coarse_positions == "chunk":
            return j
        return ((j + 1) * self.chunk - self.offset - 1).clamp(max=seq_len - 1)
