"""Every candidate of a space planned under every budget before anything trains: what
`--dry-run` prints, and what refuses a budget no candidate of a group can meet.
"""

from __future__ import annotations

import itertools

from spiralsearch.config import DataConfig, OptimConfig, resolve_model
from spiralsearch.search.space import SearchSpace
from spiralsearch.search.validate import (
    SpaceError,
    values_of,
)
from spiralsearch.training.budget import (
    BudgetError,
    non_embedding_params,
    plan,
    train_flops_per_token,
)


def _candidates(space: SearchSpace):
    """(model options, seq_len, batch_size, ModelConfig) for every choice and endpoint,
    each resolved as its trial will be (resolve_model)."""
    model = {k: values_of(v) for k, v in space.model.items() if k != "family"}
    data = [values_of(space.data.get(k, getattr(DataConfig(), k)))
            for k in ("seq_len", "tokenizer", "source")]
    batch = values_of(space.train.get("batch_size", OptimConfig().batch_size))
    for combo in itertools.product(*model.values()):
        opts = dict(zip(model, combo, strict=True))
        for seq_len, tok, src, bs in itertools.product(*data, batch):
            cfg, _ = resolve_model(opts, DataConfig(source=src, tokenizer=tok, seq_len=seq_len))
            yield opts, seq_len, bs, cfg


def check_candidates(space: SearchSpace) -> list[dict]:
    """Plan every candidate (choices and range endpoints of model options x seq_len x
    batch_size) under every budget value, before anything trains. One row per candidate:
    spec, family, model (options), seq_len, batch_size, vocab_size, params_non_embedding,
    flops_per_token (training FLOPs per token) and budgets, a list with per budget value
    {budget, status ('ok' | 'rejected'), steps, tokens, train_flops, params_non_embedding,
    reason}. A refused candidate is a row (the sweep records it as rejected); a budget value
    that refuses every candidate of a group raises SpaceError."""
    rows = []
    for opts, seq_len, bs, cfg in _candidates(space):
        row = dict(spec=opts["spec"], family=space.family_of(opts["spec"]), model=opts,
                   seq_len=seq_len, batch_size=bs, vocab_size=cfg.vocab_size,
                   params_non_embedding=non_embedding_params(cfg),
                   flops_per_token=train_flops_per_token(cfg, seq_len), budgets=[])
        for budget in space.budgets:
            entry = dict(budget=budget.value, status="ok", steps=None, tokens=None,
                         train_flops=None, params_non_embedding=None, reason=None)
            try:
                p = plan(cfg, budget, batch_size=bs, seq_len=seq_len)
                entry.update(steps=p.steps, tokens=p.tokens, train_flops=p.train_flops,
                             params_non_embedding=p.params_non_embedding)
            except BudgetError as e:
                entry.update(status="rejected", reason=str(e))
            row["budgets"].append(entry)
        rows.append(row)
    for g in space.groups():
        i = space.budgets.index(g.budget)
        reasons = [r["budgets"][i]["reason"] for r in rows if r["spec"] in g.specs]
        if reasons and all(reasons):
            what = str(g.budget)
            fam = "" if g.family == "all" else f"{g.family!r} "
            why = ("gives less than one step" if all("less than one step" in r for r in reasons)
                   else "is refused")
            raise SpaceError(f"budget.values[{i}]: {what} {why} for every {fam}candidate "
                             f"({len(reasons)}); e.g. {reasons[0]}")
    return rows
