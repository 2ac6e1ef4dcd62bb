"""Budgets that whole steps miss: refused with the way out named, or snapped to the nearest
whole step and said so (`budget.snap: true`, `train --snap`); and the warning of a run that
ends no better than the training data's unigram entropy."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from spiralsearch.cli import main
from spiralsearch.config import Budget, TrialConfig
from spiralsearch.data.dataset import entropy_warning, unigram_entropy
from spiralsearch.model.config import ModelConfig
from spiralsearch.search.space import parse_space
from spiralsearch.training.budget import BudgetError, plan

TINY = ["--d-model", "32", "--n-heads", "2", "--seq-len", "32", "--batch-size", "4",
        "--evals", "1", "--eval-batches", "1"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPIRALSEARCH_CACHE", str(tmp_path / "cache"))


def test_snap_moves_the_budget_to_the_nearest_whole_step():
    cfg = ModelConfig.from_spec("4", "tiny")
    tokens = 1.4 * 8 * 128  # 1.4 steps of 1,024 tokens: whole steps miss by 29%
    with pytest.raises(BudgetError, match=r"\(-28\.6%\); allowed ±1%: .*budget\.snap: true"):
        plan(cfg, Budget("tokens", tokens), batch_size=8, seq_len=128)
    p = plan(cfg, Budget("tokens", tokens, snap=True), batch_size=8, seq_len=128)
    assert (p.steps, p.target, p.achieved) == (1, tokens, 1024.0)
    assert p.note == ("tokens budget 1434 snapped to 1024 (-28.6%): 1 whole steps of 1,024 "
                      "tokens for spec 4")
    up = plan(cfg, Budget("tokens", 2.6 * 1024, snap=True), batch_size=8, seq_len=128)
    assert up.steps == 3 and up.achieved == 3 * 1024  # nearest, also upwards
    exact = plan(cfg, Budget("tokens", 3 * 1024, snap=True), batch_size=8, seq_len=128)
    assert exact.note is None  # nothing moved, nothing said
    flops = plan(cfg, Budget("flops", 1e9, snap=True), batch_size=8, seq_len=128)
    assert flops.achieved == flops.steps * 1024 * flops.flops_per_token
    with pytest.raises(BudgetError, match="less than half a step"):  # nearest is 0 steps
        plan(cfg, Budget("tokens", 0.4 * 1024, snap=True), batch_size=8, seq_len=128)


def test_snap_keeps_the_identity_of_unsnapped_trials():
    """A budget without snap hashes as before snap existed; with it, it is another trial."""
    d = dict(model=dict(spec="4", preset="tiny"), budget=dict(kind="tokens", value=4096.0))
    plain = TrialConfig.from_dict(d)
    # the budget's identity dict has exactly the keys it had before snap: the same hash
    assert plain.to_dict()["budget"] == dict(kind="tokens", value=4096.0, tokens=None)
    snapped = TrialConfig.from_dict(d | dict(budget=dict(kind="tokens", value=4096.0,
                                                          snap=True)))
    assert snapped.budget.snap and snapped.to_dict()["budget"]["snap"] is True
    assert snapped.trial_id != plain.trial_id
    assert TrialConfig.from_dict(snapped.to_dict()) == snapped


def test_yaml_budget_snap():
    text = ('name: s\nmodel: {spec: "4", preset: tiny}\n'
            "budget: {kind: tokens, values: [1000, 5000], snap: true}\n")
    assert all(b.snap for b in parse_space(text).budgets)
    assert not any(b.snap for b in parse_space(text.replace(", snap: true", "")).budgets)


def test_train_snap_says_where_the_budget_went(tmp_path, capsys):
    """1,500 tokens at 128 a step: refused without --snap (naming it), then 12 steps."""
    argv = ["train", "--spec", "2", *TINY, "--budget-tokens", "1500", "--out",
            str(tmp_path / "run")]
    assert main(argv) == 2
    assert "budget.snap: true; train --snap" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert main([*argv, "--snap", "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert ("note: tokens budget 1500 snapped to 1536 (+2.4%): 12 whole steps of 128 tokens "
            "for spec 2") in captured.err.splitlines()
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (s["budget_target"], s["budget_achieved"], s["steps"]) == (1500.0, 1536.0, 12)
    assert s["config"]["budget"]["snap"] is True
    assert json.loads(captured.out)["steps"] == 12


def test_unigram_entropy_and_the_warning():
    ids = np.repeat(np.arange(4, dtype=np.uint8), 25)  # 4 tokens, equally often
    assert unigram_entropy(ids, 256) == pytest.approx(math.log(4))
    assert unigram_entropy(np.zeros(10, np.uint16), 5) == 0.0
    assert entropy_warning(1.0, 1.5) is None
    assert entropy_warning(math.nan, 1.5) is None  # a diverged run says so itself
    line = entropy_warning(1.5, 1.5)
    assert line.startswith("final val loss 1.5000 nats/token is not below the training "
                           "data's unigram entropy 1.5000 nats/token") and "\n" not in line


def test_train_warns_when_the_loss_is_not_below_the_unigram_entropy(tmp_path, capsys):
    """One step of a fresh model: its loss is near log(256), far above the bytes' entropy."""
    out = tmp_path / "run"
    assert main(["train", "--spec", "2", *TINY, "--budget-tokens", "128", "--out",
                 str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    warnings = [x for x in err if x.startswith("warning: ")]
    s = json.loads((out / "summary.json").read_text())
    assert s["final_val_loss"] > s["unigram_entropy"]
    assert warnings == [f"warning: {entropy_warning(s['final_val_loss'], s['unigram_entropy'])}"]


def test_dry_run_plan_says_where_each_snapped_budget_went():
    from spiralsearch.search.candidates import check_candidates

    text = ('name: s\ndata: {seq_len: 32}\nmodel: {spec: "2", preset: tiny}\n'
            "train: {batch_size: 4}\nbudget: {kind: tokens, values: [1500, 1536], snap: true}\n")
    (row,) = check_candidates(parse_space(text))
    moved, exact = row["budgets"]
    assert (moved["steps"], moved["tokens"], exact["steps"]) == (12, 1536, 12)
    assert moved["note"].startswith("tokens budget 1500 snapped to 1536 (+2.4%)")
    assert exact["note"] is None
    (row,) = check_candidates(parse_space(text.replace(", snap: true", "").replace(
        "1500, ", "")))
    assert row["budgets"][0]["note"] is None
