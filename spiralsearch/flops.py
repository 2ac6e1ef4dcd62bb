"""Exact parameter and FLOP counts of any spec (DESIGN.md §2).

FLOPs are forward FLOPs of one prefill of `seq_len` tokens (batch 1), 2 FLOPs per
multiply-add. Counted: every matmul (QKV, attention output, MLP, both attention products as
full L_t x L_t matrices, LM head, pooling scorers, allocators, MeSH routers). Not counted:
embedding lookup, norms, activations, softmax, elementwise work. Training FLOPs per token are
3 x forward FLOPs per token.

Two independent counts must agree exactly: fvcore tracing the real module on the meta device
(no memory, no arithmetic), and `analytic_flops` from the config alone.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from fvcore.nn.jit_analysis import JitModelAnalysis
from fvcore.nn.jit_handles import (
    addmm_flop_jit,
    bmm_flop_jit,
    einsum_flop_jit,
    get_shape,
    linear_flop_jit,
    matmul_flop_jit,
)

from spiralsearch.model import ModelConfig, SpiralFormer, build_model
from spiralsearch.resample import n_chunks

__all__ = ["analytic_flops", "count_params", "describe", "fvcore_flops"]


def _sdpa_macs(inputs: list, outputs: list) -> Counter:
    """fvcore handle for aten::scaled_dot_product_attention: QK^T and AV, full matrices."""
    q, k, v = (get_shape(x) for x in inputs[:3])
    *batch, lq, dk = q
    lk, dv = k[-2], v[-1]
    n = 1
    for b in batch:
        n *= b
    return Counter({"scaled_dot_product_attention": n * lq * lk * (dk + dv)})


_MATMUL_HANDLES = {
    "aten::addmm": addmm_flop_jit,
    "aten::bmm": bmm_flop_jit,
    "aten::einsum": einsum_flop_jit,
    "aten::linear": linear_flop_jit,
    "aten::matmul": matmul_flop_jit,
    "aten::scaled_dot_product_attention": _sdpa_macs,
}


def fvcore_flops(model: SpiralFormer, seq_len: int) -> dict[str, int]:
    """Forward FLOPs (2 per multiply-add) of one prefill of `seq_len` tokens, traced by
    fvcore on the meta device. Returns totals per top-level module group:
    `pre`, `loop` (core + resampling + topology, all iterations), `post`, `head`, `total`."""
    with torch.device("meta"):
        meta = model if _is_meta(model) else build_model(model.cfg)
        idx = torch.zeros(1, seq_len, dtype=torch.long)
    # Only matmul-like ops get a handle: fvcore's default FlopCountAnalysis also counts
    # norms, which DESIGN §2 leaves out. Its handles count multiply-adds.
    fca = JitModelAnalysis(meta, idx).set_op_handle(**_MATMUL_HANDLES)
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


def _layer_flops(cfg: ModelConfig, n: int) -> int:
    """One Transformer layer on n positions: linear maps ∝ n, attention products ∝ n²."""
    d, dm = cfg.d_model, cfg.d_mlp
    linear = 2 * n * (d * 3 * d + d * d + 2 * d * dm)
    attention = 2 * 2 * n * n * d  # QK^T and AV over all heads, full n x n
    return linear + attention


def analytic_flops(cfg: ModelConfig, seq_len: int) -> dict[str, Any]:
    """Forward FLOPs of one prefill of `seq_len` tokens from the config alone, by block:
    `pre`, `iterations` (a list, one entry per loop iteration with its chunk count L_t and
    FLOPs), `transition` (MeSH's transitional router pair, else 0), `loop` (transition plus
    iterations), `post`, `head`, `total`."""
    spec, d, L = cfg.spec, cfg.d_model, seq_len
    slots = cfg.mesh_slots or spec.T + 3
    iterations = []
    for g, w in spec.iterations:
        L_t = n_chunks(L, g, w)
        core = spec.n_loop * _layer_flops(cfg, L_t)
        resample = 0
        if g > 1 and cfg.downsample == "score":
            resample += 2 * L * d  # one score per token
        if g > 1 and cfg.upsample == "allocate":
            resample += 2 * L_t * d * g  # g slot logits per chunk
        topology = 2 * 2 * L * d * slots if cfg.topology == "mesh" else 0  # write + read routers
        iterations.append(dict(chunk=g, offset=w, n_chunks=L_t, core=core, resample=resample,
                               topology=topology, total=core + resample + topology))
    # MeSH's transitional write-read cycle: one more router pair, before iteration 0
    transition = 2 * 2 * L * d * slots if cfg.topology == "mesh" and spec.T else 0
    out = dict(pre=spec.n_pre * _layer_flops(cfg, L), iterations=iterations,
               transition=transition, loop=transition + sum(it["total"] for it in iterations),
               post=spec.n_post * _layer_flops(cfg, L), head=2 * L * d * cfg.vocab_size)
    out["total"] = out["pre"] + out["loop"] + out["post"] + out["head"]
    return out


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


def describe(spec, preset: str | None = None, seq_len: int = 4096, **options) -> dict[str, Any]:
    """Parameters and FLOPs of a spec (a string, `Spec` or `ModelConfig`) at `seq_len` tokens.

    Builds on the meta device (no memory). Keys: spec, family, params_total,
    params_non_embedding, params_unrolled, flops_forward (fvcore, FLOPs for one prefill),
    flops_forward_analytic, flops_per_token_train (3 x forward / seq_len), recurrence_ratio,
    unrolled_depth, seq_len, breakdown (analytic FLOPs by block; fvcore totals by block).
    """
    if int(seq_len) < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    cfg = spec if isinstance(spec, ModelConfig) else ModelConfig.from_spec(spec, preset, **options)
    if seq_len > cfg.max_seq_len:  # counting is not limited by the trained context
        cfg = cfg.replace(max_seq_len=seq_len)
    with torch.device("meta"):
        model = build_model(cfg)
    traced = fvcore_flops(model, seq_len)
    analytic = analytic_flops(cfg, seq_len)
    params = count_params(model)
    s = cfg.spec
    return dict(
        spec=str(s), family=s.family, seq_len=seq_len,
        params_total=params["total"], params_non_embedding=params["non_embedding"],
        params_unrolled=params["unrolled"],
        flops_forward=traced["total"], flops_forward_analytic=analytic["total"],
        flops_per_token_train=3 * traced["total"] / seq_len,
        recurrence_ratio=s.recurrence_ratio, unrolled_depth=s.unrolled_depth,
        breakdown=dict(analytic=analytic, fvcore=traced),
    )
