"""The language-model loss from the final hidden states, a chunk of tokens at a time.

    loss = lm_loss(h, model.lm_head.weight, targets, chunk=4096)   # mean nats/token

At paper scale the output head dominates memory: 32 x 2048 tokens x a 50,304 vocabulary is
13 GB of fp32 logits, and autograd keeps them (and their softmax) for the backward pass. Here
the head is applied to `chunk` tokens at a time, and each chunk's gradient is taken in the
forward pass (the softmax minus the one-hot target is the whole gradient of cross-entropy),
so only one chunk of fp32 logits is ever alive and nothing is recomputed: the FLOPs are those
of the plain head. Batches of at most `chunk` tokens (and chunk 0) take the plain path,
`cross_entropy` of the logits upcast to fp32, bit for bit what training always did.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["compute_dtype", "lm_loss"]


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matmuls on x's device run in: autocast's (bf16 on CUDA in training) when it
    is on there, else x's own."""
    kind = x.device.type
    if kind in ("cuda", "cpu") and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype


def lm_loss(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 0
            ) -> torch.Tensor:
    """Mean cross-entropy (nats/token, 0-dim, fp32 or wider) of the logits `h @ weight.T` against
    `targets`: h (..., d) final hidden states, weight (vocab, d) the head, targets (...) ids.
    With 0 < chunk < tokens, at most `chunk` tokens' logits exist at once (see the module
    docstring); the loss equals the plain one within float rounding, and so do gradients."""
    h2, t = h.reshape(-1, h.shape[-1]), targets.reshape(-1)
    if chunk <= 0 or h2.shape[0] <= chunk:
        return F.cross_entropy(_wide(F.linear(h2, weight)), t)
    if torch.is_grad_enabled() and (h2.requires_grad or weight.requires_grad):
        return _ChunkedCrossEntropy.apply(h2, weight, t, chunk)
    total = h2.new_zeros(())
    for s in range(0, h2.shape[0], chunk):
        logits = _wide(F.linear(h2[s:s + chunk], weight))
        total = total + F.cross_entropy(logits, t[s:s + chunk], reduction="sum")
    return total / h2.shape[0]


def _wide(x: torch.Tensor) -> torch.Tensor:
    """x in fp32 when its dtype is narrower (bf16 logits under autocast), else as it is."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Loss and its gradients w.r.t. h and the head weight, chunk by chunk in the forward
    pass; backward only scales them by the incoming gradient."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int
                ) -> torch.Tensor:
        n = h.shape[0]
        total = h.new_zeros(())
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros_like(weight, dtype=_wide(weight).dtype)  # summed in fp32 at least
        w = weight.to(compute_dtype(weight))  # cast once, not once a chunk, under autocast
        for s in range(0, n, chunk):
            hc, tc = h[s:s + chunk], targets[s:s + chunk]
            logits = F.linear(hc.to(w.dtype), w)
            lf = _wide(logits)
            lse = torch.logsumexp(lf, dim=-1)
            total = total + (lse - lf.gather(1, tc[:, None]).squeeze(1)).sum()
            g = lf.sub_(lse[:, None]).exp_()  # softmax, in place of the fp32 logits
            g[torch.arange(tc.shape[0], device=tc.device), tc] -= 1.0
            g = g.div_(n).to(logits.dtype)  # d loss / d logits of this chunk
            grad_h[s:s + chunk] = (g @ w).to(h.dtype)
            grad_w += g.t() @ hc.to(g.dtype)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total / n

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return (grad_h * grad_out.to(grad_h.dtype),
                (grad_w * grad_out).to(ctx.weight_dtype), None, None)
