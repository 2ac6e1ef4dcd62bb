"""Every candidate of a space planned under every budget before anything trains: what
`--dry-run` prints, and what refuses a budget no candidate of a group can meet.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from spiralsearch.config import Budget, DataConfig, OptimConfig, resolve_model
from spiralsearch.model.config import ModelConfig
from spiralsearch.search.sizes import sized_model, targets
from spiralsearch.search.space import Group, SearchSpace
from spiralsearch.search.validate import (
    SpaceError,
    values_of,
)
from spiralsearch.training.budget import (
    BudgetError,
    non_embedding_params,
    param_count,
    plan,
    train_flops_per_token,
)


def _candidates(space: SearchSpace):
    """(model options, seq_len, batch_size, ModelConfig, flat options) for every choice and
    endpoint, each resolved as its trial will be (resolve_model); the flat options
    ("model.spec", "data.seq_len", ...) say which groups the candidate belongs to."""
    model = {k: values_of(v) for k, v in space.model.items() if k != "family"}
    data = [values_of(space.data.get(k, getattr(DataConfig(), k)))
            for k in ("seq_len", "tokenizer", "source")]
    batch = values_of(space.train.get("batch_size", OptimConfig().batch_size))
    for combo in itertools.product(*model.values()):
        opts = dict(zip(model, combo, strict=True))
        for seq_len, tok, src, bs in itertools.product(*data, batch):
            cfg, _ = resolve_model(opts, DataConfig(source=src, tokenizer=tok, seq_len=seq_len))
            flat = {f"model.{k}": v for k, v in opts.items()} | {
                "data.seq_len": seq_len, "data.tokenizer": tok, "data.source": src,
                "train.batch_size": bs}
            yield opts, seq_len, bs, cfg, flat


def _in_group(flat: dict, group: Group) -> bool:
    """Whether a candidate can be one of the group's trials (options that do not shape the
    plan, such as train.lr, are left aside)."""
    return flat["model.spec"] in group.specs and all(
        flat[k] == v for k, v in group.options if k in flat)


def _entry(space: SearchSpace, cfg: ModelConfig, budget: Budget, size: int | None, bs: int,
           seq_len: int) -> dict:
    """One candidate under one budget (at one size of the size axis): its plan, or why it is
    refused. A size no width can reach is the space's error, not a trial's: SpaceError."""
    entry = dict(budget=budget.value, size=size, status="ok", steps=None, tokens=None,
                 train_flops=None, params_non_embedding=None, d_model=cfg.d_model,
                 d_mlp=cfg.d_mlp, size_target=None, params_sized=None, reason=None, note=None)
    if size is not None:
        try:
            target = targets(cfg, space.sizes, budget, seq_len)[size]
            cfg = sized_model(cfg, space.sizes, size, budget, seq_len)
        except BudgetError as e:
            raise SpaceError(f"{e}; narrow sizes.span or move the centre") from None
        entry.update(size_target=target, params_sized=param_count(cfg, space.sizes.params),
                     d_model=cfg.d_model, d_mlp=cfg.d_mlp)
    try:
        p = plan(cfg, budget, batch_size=bs, seq_len=seq_len)
        entry.update(steps=p.steps, tokens=p.tokens, train_flops=p.train_flops,
                     params_non_embedding=p.params_non_embedding, d_model=p.model.d_model,
                     d_mlp=p.model.d_mlp, note=p.note)  # note: where budget.snap moved it
    except BudgetError as e:
        entry.update(status="rejected", reason=str(e))
    return entry


def check_candidates(space: SearchSpace) -> list[dict]:
    """Plan every candidate (choices and range endpoints of model options x seq_len x
    batch_size) under every budget value, before anything trains. One row per candidate:
    spec, family, model (options), seq_len, batch_size, vocab_size, params_non_embedding,
    flops_per_token (training FLOPs per token) and budgets, a list of
    {budget, size, status ('ok' | 'rejected'), steps, tokens, train_flops,
    params_non_embedding, d_model, d_mlp, size_target, params_sized, reason, note (where
    budget.snap moved the budget, else None)}: one entry per
    budget value, or with a size axis one per (budget value, size index), the size's width
    solved (size_target and params_sized in the axis's measure). A refused candidate is a
    row (the sweep records it as rejected); a budget value that refuses every candidate of
    a group, or a size no width reaches, raises SpaceError."""
    rows, flats = [], []  # flats: each row's flat options, to match rows to groups
    for opts, seq_len, bs, cfg, flat in _candidates(space):
        flats.append(flat)
        row = dict(spec=opts["spec"], family=space.family_of(opts["spec"]), model=opts,
                   seq_len=seq_len, batch_size=bs, vocab_size=cfg.vocab_size,
                   params_non_embedding=non_embedding_params(cfg),
                   flops_per_token=train_flops_per_token(cfg, seq_len), budgets=[])
        for budget in space.budgets:
            for size in range(space.sizes.count) if space.sizes else [None]:
                row["budgets"].append(_entry(space, cfg, budget, size, bs, seq_len))
        rows.append(row)
    for g in space.groups():
        reasons = [e["reason"] for r, flat in zip(rows, flats, strict=True)
                   if _in_group(flat, g) for e in r["budgets"]
                   if e["budget"] == g.budget.value and e["size"] == g.size]
        if reasons and all(reasons):
            i, what = space.budgets.index(g.budget), str(g.budget)
            fam = "" if space.search.group_by == "none" else f"{g.label!r} "
            why = ("gives less than one step" if all("less than one step" in r for r in reasons)
                   else "is refused")
            raise SpaceError(f"budget.values[{i}]: {what} {why} for every {fam}candidate "
                             f"({len(reasons)}); e.g. {reasons[0]}")
    return rows


@dataclass(frozen=True)
class Cost:
    """One candidate as one cell's trial would train it: its model (width solved on a size
    axis), batch and sequence length, data, and what the cell's budget gives it."""

    model: ModelConfig
    batch_size: int
    seq_len: int
    source: str
    tokenizer: str
    steps: int
    tokens: int
    train_flops: float


def cell_costs(space: SearchSpace) -> dict[int, list[Cost]]:
    """Group index -> the plan of every candidate that can be one of its trials (choices
    and range endpoints, as check_candidates enumerates them); candidates the budget
    refuses are left out. What the progress display and the dry run's estimate use."""
    groups = space.groups()
    out: dict[int, list[Cost]] = {g: [] for g in range(len(groups))}
    for _, seq_len, bs, cfg, flat in _candidates(space):
        for g, group in enumerate(groups):
            if not _in_group(flat, group):
                continue
            try:
                model = cfg if group.size is None else sized_model(
                    cfg, space.sizes, group.size, group.budget, seq_len)
                p = plan(model, group.budget, batch_size=bs, seq_len=seq_len)
            except BudgetError:
                continue
            out[g].append(Cost(p.model, bs, seq_len, flat["data.source"],
                               flat["data.tokenizer"], p.steps, p.tokens, p.train_flops))
    return out
