"""Exact parameter and FLOP counts of any spec (docs/design.md §2).

FLOPs are forward FLOPs of one prefill of `seq_len` tokens (batch 1), 2 FLOPs per
multiply-add. Counted: every matmul (QKV, attention output, MLP, both attention products as
full L_t x L_t matrices, LM head, pooling scorers, allocators, MeSH routers). Not counted:
embedding lookup, norms, activations, softmax, elementwise work. Training FLOPs per token are
3 x forward FLOPs per token.

Two independent counts must agree exactly: fvcore tracing the real module on the meta device
(no memory, no arithmetic), and `analytic_flops` from the config alone. Tracing costs ~20 ms
per unrolled layer, so `describe` traces only up to FVCORE_MAX_DEPTH unrolled layers and
counts deeper models analytically (the tests hold the two equal); with the bounds of
spiralsearch/limits.py every spec that parses is described in seconds.

Two attention conventions: `full` (the default and the paper's: every query against all
L_t keys, what SDPA's dense kernel computes) and `causal` (query i against its i + 1 keys
only, n(n+1)/2 products per layer on n positions, what a causal kernel or a decoder does).

Decoding (spiralsearch.model.decode) uses KV caches at every level: pre and post layers run every
new token against the token cache; iteration t runs the shared core only when a chunk closes
(token e_j = (j+1)g - w - 1 arrives), on that one latent against the j + 1 latents cached so
far. `decode_flops` counts one token exactly, with the same conventions, and summed over a
prompt whose last chunks are all closed it equals the causal prefill.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import torch

from spiralsearch.limits import at_most, too_large
from spiralsearch.model.config import ModelConfig
from spiralsearch.model.resample import n_chunks
from spiralsearch.model.transformer import SpiralFormer, build_model

__all__ = ["analytic_flops", "count_params", "decode_cost", "decode_flops", "describe",
           "fvcore_flops", "kv_cache_bytes"]


def _sdpa_macs(inputs: list, outputs: list) -> Counter:
    """fvcore handle for aten::scaled_dot_product_attention: QK^T and AV, full matrices."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    *batch, lq, dk = q
    lk, dv = k[-2], v[-1]
    n = 1
    for b in batch:
        n *= b
    return Counter({"scaled_dot_product_attention": n * lq * lk * (dk + dv)})


def _matmul_handles() -> dict:
    """fvcore's handles for the matmul-like ops, ours for SDPA. fvcore is imported here, not
    at module level: training imports this module and must run where only torch is."""
    from fvcore.nn import jit_handles as h

    return {"aten::addmm": h.addmm_flop_jit, "aten::bmm": h.bmm_flop_jit,
            "aten::einsum": h.einsum_flop_jit, "aten::linear": h.linear_flop_jit,
            "aten::matmul": h.matmul_flop_jit,
            "aten::scaled_dot_product_attention": _sdpa_macs}


def fvcore_flops(model: SpiralFormer, seq_len: int) -> dict[str, int]:
    """Forward FLOPs (2 per multiply-add) of one prefill of `seq_len` tokens, traced by
    fvcore on the meta device. Returns totals per top-level module group:
    `pre`, `loop` (core + resampling + topology, all iterations), `post`, `head`, `total`."""
    with torch.device("meta"):
        meta = model if _is_meta(model) else build_model(model.cfg)
        idx = torch.zeros(1, seq_len, dtype=torch.long)
    # Only matmul-like ops get a handle: fvcore's default FlopCountAnalysis also counts
    # norms, which docs/design.md §2 leaves out. Its handles count multiply-adds.
    from fvcore.nn.jit_analysis import JitModelAnalysis

    fca = JitModelAnalysis(meta, idx).set_op_handle(**_matmul_handles())
    fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    by_module = fca.by_module()
    macs = {
        "pre": by_module.get("pre", 0),
        "loop": sum(by_module.get(m, 0) for m in ("core", "resamplers", "topology")),
        "post": by_module.get("post", 0),
        "head": by_module.get("lm_head", 0),
    }
    macs["total"] = fca.total()
    return {k: 2 * v for k, v in macs.items()}


def _is_meta(model: torch.nn.Module) -> bool:
    return next(model.parameters()).device.type == "meta"


def _layer_flops(cfg: ModelConfig, n: int, keys: int | None = None) -> int:
    """One Transformer layer on n query positions that attend `keys` (query, key) pairs in
    all (default n*n, full): linear maps ∝ n, attention products ∝ keys."""
    d, dm = cfg.d_model, cfg.d_mlp
    linear = 2 * n * (d * 3 * d + d * d + 2 * d * dm)
    attention = 2 * 2 * d * (n * n if keys is None else keys)  # QK^T and AV, all heads
    return linear + attention


def _pairs(n: int, causal: bool) -> int:
    """(query, key) pairs of self-attention on n positions: n² full, n(n+1)/2 causal."""
    return n * (n + 1) // 2 if causal else n * n


def _router_pair(cfg: ModelConfig) -> int:
    """FLOPs of one MeSH write + read router pair on one token (0 for other topologies, and
    for a plain model, which has no topology module)."""
    if cfg.topology != "mesh" or not cfg.spec.T:
        return 0
    return 2 * 2 * cfg.d_model * (cfg.mesh_slots or cfg.spec.T + 3)


def analytic_flops(cfg: ModelConfig, seq_len: int, causal: bool = False) -> dict[str, Any]:
    """Forward FLOPs of one prefill of `seq_len` tokens from the config alone, by block:
    `pre`, `iterations` (a list, one entry per loop iteration with its chunk count L_t and
    FLOPs), `transition` (MeSH's transitional router pair, else 0), `loop` (transition plus
    iterations), `post`, `head`, `total`.

    Attention products are full L_t x L_t matrices (the paper's convention, what fvcore
    counts); `causal=True` counts only the causal triangle, L_t(L_t+1)/2 pairs per layer."""
    spec, d, L = cfg.spec, cfg.d_model, seq_len
    iterations = []
    for g, w in spec.iterations:
        L_t = n_chunks(L, g, w)
        core = spec.n_loop * _layer_flops(cfg, L_t, _pairs(L_t, causal))
        resample = 0
        if g > 1 and cfg.downsample == "score":
            resample += 2 * L * d  # one score per token
        if g > 1 and cfg.upsample == "allocate":
            resample += 2 * L_t * d * g  # g slot logits per chunk
        topology = L * _router_pair(cfg)  # write + read routers on every token
        iterations.append(dict(chunk=g, offset=w, n_chunks=L_t, core=core, resample=resample,
                               topology=topology, total=core + resample + topology))
    # MeSH's transitional write-read cycle: one more router pair, before iteration 0
    transition = L * _router_pair(cfg)
    layer = _layer_flops(cfg, L, _pairs(L, causal))
    out = dict(pre=spec.n_pre * layer, iterations=iterations,
               transition=transition, loop=transition + sum(it["total"] for it in iterations),
               post=spec.n_post * layer, head=2 * L * d * cfg.vocab_size)
    out["total"] = out["pre"] + out["loop"] + out["post"] + out["head"]
    return out


def decode_flops(cfg: ModelConfig, position: int) -> dict[str, Any]:
    """Forward FLOPs of generating the token at 0-based `position` with KV caches holding
    every earlier position (so token-level layers attend position + 1 keys), by block as
    `analytic_flops`: `pre`, `iterations` (per loop iteration: `closed`, whether this token
    closes a chunk and so runs the core, on one latent against `keys` = j + 1 cached latents),
    `transition`, `loop`, `post`, `head`, `total`."""
    if position < 0:
        raise ValueError(f"position must be >= 0, got {position}")
    spec, d = cfg.spec, cfg.d_model
    iterations = []
    for g, w in spec.iterations:
        closed = (position + w + 1) % g == 0  # this token is e_j of chunk j = (position+w)//g
        keys = (position + w + 1) // g if closed else 0
        core = spec.n_loop * _layer_flops(cfg, 1, keys) if closed else 0
        resample = 0
        if g > 1 and cfg.downsample == "score":
            resample += 2 * d  # this token's score, kept for pooling when its chunk closes
        if g > 1 and cfg.upsample == "allocate" and closed:
            resample += 2 * d * g  # the closed chunk's g slot logits
        topology = _router_pair(cfg)
        iterations.append(dict(chunk=g, offset=w, closed=closed, keys=keys, core=core,
                               resample=resample, topology=topology,
                               total=core + resample + topology))
    transition = _router_pair(cfg)
    layer = _layer_flops(cfg, 1, position + 1)
    out = dict(position=position, pre=spec.n_pre * layer, iterations=iterations,
               transition=transition, loop=transition + sum(it["total"] for it in iterations),
               post=spec.n_post * layer, head=2 * d * cfg.vocab_size)
    out["total"] = out["pre"] + out["loop"] + out["post"] + out["head"]
    return out


def kv_cache_bytes(cfg: ModelConfig, context_len: int,
                   bytes_per_value: int = 2) -> dict[str, Any]:
    """Bytes of the KV caches of one sequence at `context_len` tokens: K and V, d_model
    values each, per cached position per layer, `bytes_per_value` bytes a value (2 = bf16).

    Keys: `pre`, `iterations` (per loop iteration: `n_latents` = L_t = ⌈(L + w)/g⌉, the
    latents its cache is sized for, as the decoder preallocates for L tokens; the open
    chunk's latent is filled once it closes), `post`, `total`."""
    spec = cfg.spec
    per_position = 2 * cfg.d_model * bytes_per_value  # K and V of one layer

    def level(n_layers: int, n: int) -> int:
        return n_layers * n * per_position

    iterations = [dict(chunk=g, offset=w, n_latents=n_chunks(context_len, g, w),
                       bytes=level(spec.n_loop, n_chunks(context_len, g, w)))
                  for g, w in spec.iterations]
    out = dict(pre=level(spec.n_pre, context_len), iterations=iterations,
               post=level(spec.n_post, context_len))
    out["total"] = out["pre"] + sum(it["bytes"] for it in iterations) + out["post"]
    return out


def decode_cost(cfg: ModelConfig, context_len: int,
                kv_bytes_per_value: int = 2) -> dict[str, Any]:
    """Cost of decoding one sequence at `context_len` = L tokens already cached.

    `flops_per_token`: FLOPs per generated token, amortized: the exact mean of
    `decode_flops` over positions L .. L + P - 1, where P (`period`, tokens) is the lcm of
    the chunk sizes, so every level closes exactly P/g_t chunks in the window.
    `flops_per_token_peak`: the largest `decode_flops` in that window (at zero offsets, the
    token where every level closes). `kv_cache`: `kv_cache_bytes` at L tokens,
    `kv_bytes_per_value` bytes a value (2 = bf16)."""
    if context_len < 0:
        raise ValueError(f"context_len must be >= 0, got {context_len}")
    if not at_most("seq_len", context_len):
        raise ValueError(too_large("seq_len", context_len, "decode context"))
    period = math.lcm(*(g for g, _ in cfg.spec.iterations))  # 1 for a plain model
    costs = _decode_totals(cfg, context_len, period).tolist()  # Python ints: an exact sum
    return dict(context_len=context_len, period=period,
                flops_per_token=sum(costs) / period, flops_per_token_peak=max(costs),
                kv_bytes_per_value=kv_bytes_per_value,
                kv_cache=kv_cache_bytes(cfg, context_len, kv_bytes_per_value))


def _decode_totals(cfg: ModelConfig, start: int, n: int) -> np.ndarray:
    """decode_flops(cfg, p)["total"] for p = start .. start + n - 1 at once (int64; the
    bounds of spiralsearch/limits.py keep every token's count below 2**63), so a period of
    65,536 tokens over 256 levels takes a fraction of a second. Tested equal to
    decode_flops token by token."""
    spec, d = cfg.spec, cfg.d_model
    p = np.arange(start, start + n, dtype=np.int64)
    one = _layer_flops(cfg, 1, 0)  # a layer's linear maps on one position
    total = spec.n_pre * (one + 4 * d * (p + 1)) + spec.n_post * (one + 4 * d * (p + 1))
    total += 2 * d * cfg.vocab_size + _router_pair(cfg)  # head, MeSH transition
    for g, w in spec.iterations:
        closes = (p + w + 1) % g == 0
        core = spec.n_loop * (one + 4 * d * ((p + w + 1) // g))
        if g > 1 and cfg.upsample == "allocate":
            core += 2 * d * g
        total += np.where(closes, core, 0) + _router_pair(cfg)
        if g > 1 and cfg.downsample == "score":
            total += 2 * d
    return total


def count_params(model: SpiralFormer) -> dict[str, int]:
    """Parameter counts: `total` (unique stored tensors, embeddings included),
    `non_embedding` (total minus input embedding and LM head) and `unrolled` (non-embedding
    with every use of a shared core layer counted, so 6·N·D estimates stay honest)."""
    total = sum(p.numel() for p in model.parameters())
    embedding = model.wte.weight.numel() + model.lm_head.weight.numel()
    core = sum(p.numel() for p in model.core.parameters())
    non_embedding = total - embedding
    unrolled = non_embedding + (model.cfg.spec.T - 1) * core if core else non_embedding
    return dict(total=total, non_embedding=non_embedding, unrolled=unrolled)


FVCORE_MAX_DEPTH = 64  # unrolled layers fvcore traces in describe (~20 ms each)


def describe(spec, preset: str | None = None, seq_len: int = 4096,
             decode_context: int | None = None, **options) -> dict[str, Any]:
    """Parameters and FLOPs of a spec (a string, `Spec` or `ModelConfig`) at `seq_len` tokens.

    Builds on the meta device (no memory). Keys: spec, family, params_total,
    params_non_embedding, params_unrolled, flops_forward (FLOPs for one prefill, full L x L
    attention: fvcore's trace, or the analytic count past FVCORE_MAX_DEPTH unrolled layers),
    flops_forward_analytic (the same, from the config), flops_traced (whether fvcore traced
    it, so flops_forward == flops_forward_analytic is a check), flops_forward_causal (the
    prefill with causal-triangle attention, analytic), flops_per_token_train (3 x forward /
    seq_len), recurrence_ratio, unrolled_depth, seq_len, breakdown (analytic FLOPs by block;
    fvcore totals by block, None when not traced), decode (`decode_cost` at
    `decode_context` tokens, default seq_len: FLOPs per generated token, KV-cache bytes).
    """
    if int(seq_len) < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if not at_most("seq_len", seq_len):
        raise ValueError(too_large("seq_len", seq_len))
    cfg = spec if isinstance(spec, ModelConfig) else ModelConfig.from_spec(spec, preset, **options)
    if seq_len > cfg.max_seq_len:  # counting is not limited by the trained context
        cfg = cfg.replace(max_seq_len=seq_len)
    decode = decode_cost(cfg, seq_len if decode_context is None else decode_context)
    with torch.device("meta"):
        model = build_model(cfg)
    s = cfg.spec
    traced = fvcore_flops(model, seq_len) if s.unrolled_depth <= FVCORE_MAX_DEPTH else None
    analytic = analytic_flops(cfg, seq_len)
    forward = traced["total"] if traced else analytic["total"]
    params = count_params(model)
    return dict(
        spec=str(s), family=s.family, seq_len=seq_len,
        params_total=params["total"], params_non_embedding=params["non_embedding"],
        params_unrolled=params["unrolled"],
        flops_forward=forward, flops_forward_analytic=analytic["total"],
        flops_traced=traced is not None,
        flops_forward_causal=analytic_flops(cfg, seq_len, causal=True)["total"],
        flops_per_token_train=3 * forward / seq_len,
        recurrence_ratio=s.recurrence_ratio, unrolled_depth=s.unrolled_depth,
        breakdown=dict(analytic=analytic, fvcore=traced),
        decode=decode,
    )
