"""Topology updates U: how one loop iteration's output rejoins the running state
(docs/design.md §1.3).

Every topology has `start(emb, h_pre) -> (h0, state)`, which turns the pre block's output
into the loop's initial state h(0), and `step(t, state, h, z, zhat, rs) -> (h, state)`: the
running token state h (B, L, d), the chunk latents z fed to the core, the core's output zhat,
and the iteration's Resampler `rs` (whose `up` up-samples and causally shifts a chunk-level
tensor back to tokens). State is passed along, never kept on the module, so a forward pass
leaves no tensors behind. Every router reads one position and writes that position, so the
topology itself is position-wise and cannot break causality.
"""

from __future__ import annotations

import torch
from torch import nn

from spiralsearch.model.config import MESH_INIT, TOPOLOGIES  # noqa: F401
from spiralsearch.model.resample import Resampler


class Residual(nn.Module):
    """h(t+1) = h(t) + shift(up(zhat - z)); at g = 1 exactly plain looping h(t+1) = f(h(t))."""

    def start(self, emb: torch.Tensor, h_pre: torch.Tensor):
        return h_pre, None

    def step(self, t: int, state, h, z, zhat, rs: Resampler):
        if rs.identity:  # h + (f(h) - h) == f(h) mathematically; return f(h) to be exact
            return zhat, state
        return h + rs.up(zhat - z, zhat, h.shape[1]), state


class Anchor(nn.Module):
    """h(t+1) = h(0) + shift(up(zhat)): re-attaches the pre-block output at every step."""

    def start(self, emb: torch.Tensor, h_pre: torch.Tensor):
        return h_pre, h_pre

    def step(self, t: int, h0, h, z, zhat, rs: Resampler):
        return h0 + rs.up(zhat, zhat, h.shape[1]), h0


class Mesh(nn.Module):
    """MeSH (Yu et al. 2025, arXiv 2510.07739): a buffer of B state slots with learned
    write and read routers, one pair per iteration plus one for the transition.

    Slot 0 starts as the token embeddings (MeSH Eq. 2; `init="loop_input"`, an ablation:
    the pre-block output), the others as zeros. A transitional write-read cycle (MeSH §3.2)
    writes the pre-block output h_pre into the buffer and reads the loop's initial state h(0)
    from it, so h_pre reaches the loop at every resolution, even when iteration 0 is coarse.
    Iteration t then computes two softmaxes over slots from h(t): the update is written
    m_b += u * w_write_b, then the next state is read h(t+1) = sum_b m_b * w_read_b.
    Router pairs: T + 1 (index 0 is the transition, t + 1 is iteration t).
    """

    def __init__(self, d_model: int, n_iterations: int, n_slots: int, bias: bool = True,
                 init: str = "embed"):
        super().__init__()
        self.n_slots, self.init = n_slots, init
        self.write = nn.ModuleList(nn.Linear(d_model, n_slots, bias=bias)
                                   for _ in range(n_iterations + 1))
        self.read = nn.ModuleList(nn.Linear(d_model, n_slots, bias=bias)
                                  for _ in range(n_iterations + 1))
        for m in [*self.write, *self.read]:  # uniform routing at init
            nn.init.zeros_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def start(self, emb: torch.Tensor, h_pre: torch.Tensor):
        # the buffer m: (n_slots, B, L, d); slot 0 = token embeddings or the pre-block output
        first = emb if self.init == "embed" else h_pre
        m = torch.cat([first.unsqueeze(0), first.new_zeros(self.n_slots - 1, *first.shape)])
        return self.write_read(0, m, h_pre, h_pre)  # the transitional cycle

    def write_read(self, pair: int, m: torch.Tensor, h: torch.Tensor, u: torch.Tensor):
        """Router pair `pair`, both routers computed from h: write u, then read the state."""
        # softmax over slots, moved first to broadcast against m: (n_slots, B, L, 1)
        w_write = self.write[pair](h).softmax(-1).movedim(-1, 0).unsqueeze(-1)
        w_read = self.read[pair](h).softmax(-1).movedim(-1, 0).unsqueeze(-1)
        m = m + u.unsqueeze(0) * w_write
        return (m * w_read).sum(0), m

    def step(self, t: int, m, h, z, zhat, rs: Resampler):
        return self.write_read(t + 1, m, h, rs.up(zhat, zhat, h.shape[1]))


def build_topology(name: str, d_model: int, n_iterations: int, mesh_slots: int | None,
                   bias: bool = True, mesh_init: str = "embed") -> nn.Module:
    """The topology module for `name` in TOPOLOGIES. A model with no loop (T = 0) has no
    topology: the plain Transformer stays plain whatever `name` says."""
    if name == "residual" or n_iterations == 0:
        return Residual()
    if name == "anchor":
        return Anchor()
    if name == "mesh":
        return Mesh(d_model, n_iterations, mesh_slots or n_iterations + 3, bias, mesh_init)
    raise ValueError(f"unknown topology {name!r}; allowed: {', '.join(TOPOLOGIES)}")
