"""Attention probes per loop iteration (docs/design.md §7).

For every loop iteration t, core layer and head, with A the causal attention matrix at that
iteration's resolution (L_t chunk latents), averaged over a fixed set of held-out sequences:

- key-marginal entropy: p(k) = mean over queries of A[q, k]; H = -sum_k p(k) log p(k) (nats),
  and H / log L_t (0: every query looks at one key; 1: attention spread evenly);
- local attention mass (LAM): mean over queries of the mass on keys q - w < k <= q, with the
  window w counted in positions of that resolution;
- dynamic heads: the top 40% of (layer, head) by the range of a metric across iterations.

    df = attention_probes(model, x)            # one row per (iteration, layer, head)
    dynamic_heads(df, "lam")                   # the heads that change most across iterations
    df, seq_len = probe_run(Path("runs/x"))    # a trained run on its own held-out sequences
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from functools import partial
from pathlib import Path

import pandas as pd
import torch

from spiralsearch.model.transformer import SpiralFormer

METRICS = ("entropy", "entropy_norm", "lam")


class _Recorder:
    """Receives (q, k) from each core attention call; the n-th call of a core layer within
    one forward pass is loop iteration n."""

    def __init__(self, window: int):
        self.window = window
        self.calls: dict[int, int] = defaultdict(int)
        self.sums: dict[tuple[int, int], torch.Tensor] = {}  # (iteration, layer) -> (H, 3)
        self.counts: dict[tuple[int, int], int] = defaultdict(int)
        self.positions: dict[int, int] = {}  # iteration -> L_t

    def new_pass(self, *_) -> None:
        self.calls.clear()

    def __call__(self, q: torch.Tensor, k: torch.Tensor, *, layer: int) -> None:
        t = self.calls[layer]
        self.calls[layer] += 1
        stats = head_stats(q, k, self.window)  # (B, H, 3)
        key = (t, layer)
        self.sums[key] = self.sums.get(key, 0) + stats.sum(0)
        self.counts[key] += q.shape[0]
        self.positions[t] = q.shape[2]


@torch.no_grad()
def head_stats(q: torch.Tensor, k: torch.Tensor, window: int) -> torch.Tensor:
    """Per sequence and head: key-marginal entropy (nats), the same over log L, and LAM.
    q, k: (B, H, L, head_dim) after rotary. Returns (B, H, 3), float64."""
    L = q.shape[2]
    scores = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    i = torch.arange(L, device=q.device)
    causal = i[None, :] <= i[:, None]  # key k <= query q
    A = scores.masked_fill(~causal, float("-inf")).softmax(-1)  # (B, H, Lq, Lk)
    p = A.mean(2)  # key marginal
    entropy = -(p * p.clamp_min(1e-300).log()).sum(-1)
    norm = entropy / math.log(L) if L > 1 else torch.zeros_like(entropy)
    local = causal & (i[None, :] > i[:, None] - window)
    lam = (A * local).sum(-1).mean(-1)
    return torch.stack([entropy, norm, lam], dim=-1)


def attention_probes(model: SpiralFormer, sequences: torch.Tensor, *, window: int = 4,
                     batch_size: int = 8) -> pd.DataFrame:
    """Probe statistics of every loop iteration, core layer and head, averaged over
    `sequences` (N, L) token ids. Columns: iteration, chunk, offset, positions (L_t),
    layer, head, entropy (nats), entropy_norm, lam. Leaves the model as it found it."""
    if not len(model.core) or not model.cfg.spec.iterations:
        raise ValueError(f"probe: spec {model.cfg.spec} has no shared core (a plain model): "
                         f"the probes are per loop iteration, so there is nothing to probe")
    rec = _Recorder(window)
    attns = [blk.attn for blk in model.core]
    for layer, attn in enumerate(attns):
        attn.probe = partial(rec, layer=layer)
    hook = model.register_forward_pre_hook(rec.new_pass)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in sequences.split(batch_size):
                model(batch)
    finally:
        hook.remove()
        for attn in attns:
            attn.probe = None
        model.train(was_training)
    rows = []
    its = model.cfg.spec.iterations
    for (t, layer), total in sorted(rec.sums.items()):
        mean = (total / rec.counts[(t, layer)]).tolist()
        for head, (h, hn, lam) in enumerate(mean):
            rows.append(dict(iteration=t, chunk=its[t].chunk, offset=its[t].offset,
                             positions=rec.positions[t], layer=layer, head=head, entropy=h,
                             entropy_norm=hn, lam=lam))
    return pd.DataFrame(rows)


def dynamic_heads(df: pd.DataFrame, metric: str = "entropy_norm", top: float = 0.4
                  ) -> pd.DataFrame:
    """The top `top` share of (layer, head) by the range (max - min) of `metric` across loop
    iterations, largest range first. Columns: layer, head, range, and the metric's value at
    each iteration (`it0`, `it1`, ...)."""
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
    wide = df.pivot_table(index=["layer", "head"], columns="iteration", values=metric)
    wide.columns = [f"it{c}" for c in wide.columns]
    wide.insert(0, "range", wide.max(axis=1) - wide.min(axis=1))
    n = max(1, math.ceil(top * len(wide)))
    return wide.sort_values("range", ascending=False).head(n).reset_index()


def uniform_baseline(positions: int, window: int = 4) -> dict[str, float]:
    """What the probes read for uniform causal attention (every query spread evenly over its
    keys) at `positions` (L_t): `entropy` (nats; below log L_t, since early keys are seen by
    more queries), `entropy_max` = log L_t (a uniform key marginal) and `lam`."""
    zeros = torch.zeros(1, 1, positions, 1)
    h, _, lam = head_stats(zeros, zeros, window)[0, 0].tolist()
    return dict(entropy=h, entropy_max=math.log(positions), lam=lam)


def load_run(run: Path):
    """(config, model) of a training run folder (`spiralsearch train --out`, or a sweep
    trial's kept checkpoint folder), from its summary.json and checkpoints/last.pt."""
    from spiralsearch.config import TrialConfig
    from spiralsearch.model.transformer import build_model

    summary, ckpt = run / "summary.json", run / "checkpoints" / "last.pt"
    if not summary.exists() or not ckpt.exists():
        raise FileNotFoundError(f"{run}: not a training run (needs summary.json and "
                                f"checkpoints/last.pt from `spiralsearch train --out`)")
    config = TrialConfig.from_dict(json.loads(summary.read_text())["config"])
    model = build_model(config.model)
    model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["model"])
    return config, model


def probe_run(run: Path, *, sequences: int = 32, seq_len: int | None = None,
              window: int = 4, data: str | None = None) -> tuple[pd.DataFrame, int]:
    """attention_probes of a run folder's model on `sequences` fixed held-out sequences of
    `seq_len` tokens (default: the run's) from the run's own validation split and tokenizer
    (`data`: another source, same tokenizer settings). Returns (probe rows, seq_len)."""
    from spiralsearch.training.loop import load_data

    config, model = load_run(run)
    if data:
        config = config.replace(data=config.data.replace(source=data))
    seq_len = seq_len or config.data.seq_len
    x, _ = next(load_data(config).val_batches(sequences, seq_len, 1))
    return attention_probes(model, x, window=window), seq_len
