import json
import math
import subprocess
import sys

import pytest
import torch

from spiralsearch.cli import main
from spiralsearch.config import OptimConfig, TrialConfig
from spiralsearch.model.config import ModelConfig
from spiralsearch.model.counting import describe
from spiralsearch.training.budget import (
    Budget,
    BudgetError,
    non_embedding_params,
    plan,
    solve_width,
)
from spiralsearch.training.loop import lr_at, train


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPIRALSEARCH_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)  # deterministic and fair under pytest-xdist


def small(spec="1+2x{1/4,1}+1", tokens=16 * 64 * 20, **train):
    return TrialConfig.from_dict(dict(
        model=dict(spec=spec, preset="tiny", d_model=32, n_heads=2),
        data=dict(source="corpus:sotu", seq_len=64),
        train=dict(batch_size=16, lr=3e-3, evals=4, eval_batches=2) | train,
        budget=dict(kind="tokens", value=tokens)))


@pytest.mark.slow
def test_loss_falls_well_below_unigram_entropy():
    result = train(small("1+1x{1/2,1}+1", tokens=16 * 64 * 150, lr=5e-3))
    s = result.summary
    assert s["status"] == "complete" and s["steps"] == 150
    assert s["final_val_loss"] < s["unigram_entropy"] - 0.5, s
    assert result.metrics[-1]["val_loss"] < result.metrics[0]["val_loss"]


def test_resume_after_interrupt_gives_the_identical_curve(tmp_path):
    cfg = small()
    full = train(cfg, out_dir=tmp_path / "full")
    calls = []

    def crash(row):
        calls.append(row)
        if len(calls) == 2:  # checkpoint at the 2nd evaluation is on disk
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, out_dir=tmp_path / "resumed", callback=crash)
    resumed = train(cfg, out_dir=tmp_path / "resumed")
    curve = [(m["step"], m["train_loss"], m["val_loss"]) for m in full.metrics]
    assert [(m["step"], m["train_loss"], m["val_loss"]) for m in resumed.metrics] == curve
    assert resumed.summary["final_val_loss"] == full.summary["final_val_loss"]
    saved = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert saved["status"] == "complete" and saved["steps"] == full.summary["steps"]


@pytest.mark.slow
def test_flop_budget_is_met_within_one_percent():
    cfg = ModelConfig.from_spec("1+2x{1/4,1/2,1}+1", "tiny", max_seq_len=128)
    fpt = describe(cfg, seq_len=128)["flops_per_token_train"]  # fvcore's count
    target = 2e11
    p = plan(cfg, Budget("flops", target), batch_size=8, seq_len=128)
    assert p.flops_per_token == fpt
    assert abs(p.achieved / target - 1) <= 0.01
    assert p.achieved == p.steps * 8 * 128 * fpt
    result = train(TrialConfig.from_dict(dict(
        model=dict(spec="1+2x{1/4,1/2,1}+1", preset="tiny"), data=dict(seq_len=128),
        train=dict(batch_size=8, evals=1, eval_batches=1),
        budget=dict(kind="flops", value=target))))
    assert result.summary["steps"] == p.steps
    assert abs(result.summary["budget_achieved"] / target - 1) <= 0.01


@pytest.mark.parametrize("target", [2e5, 1e6, 3.3e6])
def test_params_solver_hits_target(target):
    cfg = solve_width(ModelConfig.from_spec("1+2x{1/4,1}+1", "tiny"), target)
    assert abs(non_embedding_params(cfg) / target - 1) <= 0.01
    assert cfg.d_model % cfg.n_heads == 0


def test_budget_refusals():
    cfg = ModelConfig.from_spec("4", "tiny")
    with pytest.raises(BudgetError, match="less than one step"):
        plan(cfg, Budget("flops", 1e6), batch_size=8, seq_len=128)
    with pytest.raises(BudgetError, match="allowed ±1%"):  # 1.5 steps
        plan(cfg, Budget("tokens", 1.5 * 8 * 128), batch_size=8, seq_len=128)
    with pytest.raises(BudgetError, match="must be > 0"):
        Budget("tokens", 0)
    with pytest.raises(BudgetError, match="needs the training length"):
        Budget("params", 1e6)
    with pytest.raises(BudgetError, match="not one of flops, tokens, params"):
        Budget("steps", 10)


def test_divergence_stops_and_keeps_metrics(monkeypatch):
    """A non-finite loss is caught at the next evaluation (the loss stays on the device
    between them: no host sync per step), which names the first bad step."""
    import spiralsearch.training.loop as tr

    real = tr.build_model

    def exploding(cfg):  # the 7th training forward (step 6) returns a NaN loss
        model = real(cfg)
        forward, calls = model.forward, []

        def forward_nan_later(idx, *args):
            calls.extend([1] if model.training else [])
            out = forward(idx, *args)
            return out * math.nan if len(calls) >= 7 and model.training else out
        model.forward = forward_nan_later
        return model

    monkeypatch.setattr(tr, "build_model", exploding)
    result = train(small(evals=5))  # 20 steps, evaluations at 4, 8, ...
    assert result.status == "diverged"
    assert result.summary["error"] == "non-finite training loss at step 6"
    assert [m["step"] for m in result.metrics] == [4, 8]  # metrics kept up to the blow-up
    assert math.isfinite(result.metrics[0]["val_loss"])
    assert math.isnan(result.metrics[-1]["val_loss"])
    assert math.isnan(result.metrics[-1]["train_loss"])
    assert result.summary["steps"] == 8


def test_lr_schedule():
    cfg = OptimConfig(lr=1.0, warmup_frac=0.1, min_lr_frac=0.1)
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))


def test_cli_train_writes_summary(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--spec", "1+1x{1/2,1}+1", "--d-model", "32", "--n-heads", "2",
               "--seq-len", "32", "--batch-size", "4", "--budget-tokens", str(4 * 32 * 6),
               "--evals", "2", "--eval-batches", "1", "--out", str(out)])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    for key in ("status", "spec", "family", "budget_kind", "budget_target", "budget_achieved",
                "steps", "tokens", "train_flops", "final_val_loss", "final_val_bpb",
                "best_val_loss", "params_total", "params_non_embedding", "wall_seconds"):
        assert key in s
    assert s["status"] == "complete" and s["steps"] == 6 and s["family"] == "spiral"
    assert (out / "checkpoints" / "last.pt").exists()


@pytest.mark.parametrize("argv, fragment", [
    (["--data", "nosuch:thing", "--budget-tokens", "1e5"], "unknown source kind 'nosuch'"),
    (["--data", "text:EMPTY", "--budget-tokens", "1e5"], "empty"),
    (["--budget-tokens", "0"], "must be > 0"),
    (["--budget-flops", "1e3"], "less than one step"),
])
def test_cli_train_bad_input(argv, fragment, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    argv = [a.replace("EMPTY", str(empty)) for a in argv]
    out = tmp_path / "out"
    assert main(["train", "--spec", "4", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    # no partial cache files: only complete entries (with their meta.json), no temp files
    files = list((tmp_path / "cache").rglob("*"))
    assert not [p for p in files if p.name.startswith(".")]
    assert all((p.parent / "meta.json").exists() for p in files if p.suffix == ".bin")


def test_every_trial_reports_its_test_loss_and_selection_never_sees_it():
    """A complete trial scores the held-out test split once, at the end: final_test_loss
    (and bpb) in its summary, none in the per-evaluation metrics the search reads."""
    result = train(small(tokens=16 * 64 * 4, evals=2))
    s = result.summary
    assert s["status"] == "complete" and math.isfinite(s["final_test_loss"])
    assert s["final_test_bpb"] == pytest.approx(s["final_test_loss"] / math.log(2))  # bytes
    assert s["final_test_loss"] != s["final_val_loss"]  # other documents
    assert all("test" not in k for row in result.metrics for k in row)
    none = train(small(tokens=16 * 64 * 4, evals=1).replace(
        data=small().data.replace(test_fraction=0.0)))
    assert math.isnan(none.summary["final_test_loss"])  # no test split asked for


def test_compile_option_picks_the_forward():
    """train.compile: on wraps the model in torch.compile, auto only on CUDA, off never; the
    wrapper shares the model's parameters. (Compiling on this CPU takes minutes, so that
    compiled training gives eager's losses is checked by benchmarks/bench_compile.py.)"""
    from spiralsearch.config import ConfigError
    from spiralsearch.training.loop import compiled

    model = torch.nn.Linear(2, 2)
    assert compiled(model, "auto", torch.device("cpu")) is model
    assert compiled(model, "off", torch.device("cuda")) is model
    wrapped = compiled(model, "on", torch.device("cpu"))  # lazy: nothing compiles yet
    assert wrapped is not model and wrapped._orig_mod is model
    with pytest.raises(ConfigError, match="train.compile: 'yes' is not one of off, on, auto"):
        small(compile="yes")


def test_the_training_path_imports_only_torch_numpy_and_yaml():
    """A GPU box may have only torch: model, data and training import nothing heavier than
    torch, numpy and pyyaml (fvcore, pandas, duckdb, ray... only where they are used)."""
    heavy = ("fvcore", "pandas", "duckdb", "ray", "optuna", "plotly", "scipy", "sklearn")
    code = ("import sys; import spiralsearch.training.loop, spiralsearch.model, "
            "spiralsearch.data.dataset, spiralsearch.config; "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert run.stdout.strip() == "[]"
