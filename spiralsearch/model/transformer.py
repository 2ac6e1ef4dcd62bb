"""The SpiralFormer family from one generator (docs/design.md §1).

embedding -> pre block -> shared core looped T times, iteration t at resolution 1/g_t
(down-sample to chunk latents, core, up-sample, causal right-shift, topology update) ->
post block -> final norm -> LM head. A plain Transformer is a spec with no loop; a
full-resolution looped model is a spec whose iterations are all 1: same code path.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from spiralsearch.model import decode
from spiralsearch.model.config import (  # noqa: F401 (re-exported: the model's public face)
    CHOICES,
    PRESET_LAYERS,
    PRESETS,
    ConfigError,
    ModelConfig,
)
from spiralsearch.model.loss import compute_dtype, lm_loss
from spiralsearch.model.resample import Resampler
from spiralsearch.model.topology import build_topology


def rotary_cos_sin(positions: torch.Tensor, dim: int, base: float, dtype: torch.dtype):
    """cos/sin tables (L, dim) for integer `positions` (L,), GPT-NeoX rotate-half layout."""
    inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, device=positions.device,
                                           dtype=torch.float32) / dim)
    angles = positions.float()[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first cos.shape[-1] dims of x (B, H, L, hd); the rest pass through."""
    rd = cos.shape[-1]
    if rd == 0:
        return x
    xr, xp = x[..., :rd], x[..., rd:]
    x1, x2 = xr.chunk(2, dim=-1)
    rotated = xr * cos + torch.cat([-x2, x1], dim=-1) * sin
    return torch.cat([rotated, xp], dim=-1)


class Attention(nn.Module):
    """Multi-head causal self-attention with partial rotary embeddings, via SDPA."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.probe = None  # set by spiralsearch.analysis.probes to receive attention maps

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        B, L, d = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if self.probe is not None:
            self.probe(q, k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, L, d))

    def forward_cached(self, x: torch.Tensor, rope, cache) -> torch.Tensor:
        """`forward` for incremental decoding (spiralsearch.model.decode): the L new positions in x
        (B, L, d) attend to the keys/values in `cache` and to themselves; `cache.update` stores
        their k, v. L > 1 only into an empty cache (prefill), where the causal mask is right.
        Probes are not called: they read whole-sequence maps, so run `forward` for them."""
        B, L, d = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        k, v = cache.update(k, v)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=L > 1)
        return self.proj(y.transpose(1, 2).reshape(B, L, d))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_mlp, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_mlp, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-norm Transformer layer; sequential or (GPT-NeoX) parallel residual."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.parallel = cfg.parallel_residual
        self.ln1 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        self.attn = Attention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, rope) -> torch.Tensor:
        if self.parallel:
            return x + self.attn(self.ln1(x), rope) + self.mlp(self.ln2(x))
        x = x + self.attn(self.ln1(x), rope)
        return x + self.mlp(self.ln2(x))

    def forward_cached(self, x: torch.Tensor, rope, cache) -> torch.Tensor:
        """`forward` with attention over a KV cache (see Attention.forward_cached)."""
        a = self.attn.forward_cached(self.ln1(x), rope, cache)
        if self.parallel:
            return x + a + self.mlp(self.ln2(x))
        x = x + a
        return x + self.mlp(self.ln2(x))


class SpiralFormer(nn.Module):
    """A Middle-cycle language model: pre block, shared core looped over a resolution
    schedule, post block. `forward(idx)` maps token ids (B, L) to logits (B, L, vocab)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        spec = cfg.spec
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pre = nn.ModuleList(Block(cfg) for _ in range(spec.n_pre))
        self.core = nn.ModuleList(Block(cfg) for _ in range(spec.n_loop))
        self.resamplers = nn.ModuleList(
            Resampler(cfg.d_model, g, w, downsample=cfg.downsample, upsample=cfg.upsample,
                      shift=cfg.shift, coarse_positions=cfg.coarse_positions, bias=cfg.bias)
            for g, w in spec.iterations)
        self.topology = build_topology(cfg.topology, cfg.d_model, spec.T, cfg.mesh_slots,
                                       cfg.bias, cfg.mesh_init)
        self.post = nn.ModuleList(Block(cfg) for _ in range(spec.n_post))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        """GPT-2 style init; output projections shrink with the unrolled depth. Resampling
        and routing modules keep their zero init (mean pooling, repeat, uniform routing)."""
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * self.cfg.spec.unrolled_depth)
        nn.init.normal_(self.wte.weight, std=std)
        nn.init.normal_(self.lm_head.weight, std=std)
        for blk in [*self.pre, *self.core, *self.post]:
            for m in blk.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=std)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
            nn.init.normal_(blk.attn.proj.weight, std=out_std)
            nn.init.normal_(blk.mlp.proj.weight, std=out_std)

    def _rope(self, positions: torch.Tensor, dtype: torch.dtype):
        return rotary_cos_sin(positions, self.cfg.rotary_dim, self.cfg.rotary_base, dtype)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                loss_chunk: int = 0) -> torch.Tensor:
        """Logits (B, L, vocab_size) for token ids idx (B, L), any L in [1, max_seq_len]; or,
        given targets (B, L), only the mean cross-entropy (nats/token, fp32), computed
        `loss_chunk` tokens at a time so the whole logits never exist (model/loss.py)."""
        h = self.ln_f(self.hidden(idx))
        if targets is None:
            return self.lm_head(h)
        return lm_loss(h, self.lm_head.weight, targets, loss_chunk)

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """The last block's output (B, L, d_model) for token ids idx (B, L), before the final
        norm and the head."""
        B, L = idx.shape
        if not 1 <= L <= self.cfg.max_seq_len:
            raise ValueError(f"sequence length {L} outside [1, max_seq_len={self.cfg.max_seq_len}]")
        emb = self.wte(idx)
        if self.cfg.embed_scale:
            emb = emb * math.sqrt(self.cfg.d_model)
        # rotary tables in the compute dtype: rotating q and k (bf16 from the qkv projection
        # under autocast) does not upcast them to fp32 before attention
        dtype = compute_dtype(emb)
        rope = self._rope(torch.arange(L, device=idx.device), dtype)
        h = emb
        for blk in self.pre:
            h = blk(h, rope)
        h, state = self.topology.start(emb, h)
        for t, rs in enumerate(self.resamplers):
            z = rs.down(h)
            zhat = z
            core_rope = rope if rs.chunk == 1 else self._rope(rs.positions(L, idx.device),
                                                              dtype)
            for blk in self.core:
                zhat = blk(zhat, core_rope)
            h, state = self.topology.step(t, state, h, z, zhat, rs)
        for blk in self.post:
            h = blk(h, rope)
        return h

    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Continue token ids idx (B, L) by max_new_tokens tokens: (B, L + max_new_tokens).
        Greedy at temperature 0, else sampled from softmax(logits / temperature), top-k
        filtered if given. Uses key/value caches at every resolution (spiralsearch.model.decode)."""
        return decode.generate(self, idx, max_new_tokens, temperature, top_k, generator)


@contextmanager
def _no_random_init():
    """Random init is meaningless on the meta device, and there its first call imports
    torch._dynamo (~1.5 s on torch 2.13); nn.Module constructors look the init functions up
    on `torch.nn.init` at call time, so swapping them out skips it."""
    names = ("uniform_", "normal_", "kaiming_uniform_", "trunc_normal_")
    saved = {n: getattr(nn.init, n) for n in names}
    for n in names:
        setattr(nn.init, n, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(nn.init, n, f)


def build_model(cfg: ModelConfig | str) -> SpiralFormer:
    """Build the model for a config (or a spec string, tiny width) on the current default
    device; wrap in `with torch.device("meta"):` to build without memory (and no init)."""
    if not isinstance(cfg, ModelConfig):
        cfg = ModelConfig.from_spec(cfg, preset="tiny")
    if torch.get_default_device().type == "meta":
        with _no_random_init():
            return SpiralFormer(cfg)
    return SpiralFormer(cfg)
