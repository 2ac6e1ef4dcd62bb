"""Data-parallel training on two CPU processes over gloo: the loss curve of a 2-worker run
equals the one-worker run's within float rounding (each worker takes half of every batch,
DDP averages the gradients), and only rank 0 reports and writes."""

import json
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from clusters import free_port

from spiralsearch.config import TrialConfig
from spiralsearch.training.loop import train, train_data_parallel


def config(**train_opts) -> TrialConfig:
    return TrialConfig.from_dict(dict(
        model=dict(spec="1+2x{1/4,1/2,1}+1", preset="tiny", d_model=32, n_heads=2),
        data=dict(source="corpus:sotu", seq_len=64),
        train=dict(batch_size=16, lr=3e-3, evals=3, eval_batches=2, threads=1) | train_opts,
        budget=dict(kind="tokens", value=16 * 64 * 12)))


def _worker(rank: int, size: int, port: int, out: str, cfg: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        rows = []
        result = train_data_parallel(cfg, out_dir=out, callback=rows.append)
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump(dict(rows=rows, summary=None if result is None else result.summary), f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_workers_follow_the_one_worker_loss_curve(tmp_path, monkeypatch):
    monkeypatch.setenv("SPIRALSEARCH_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    one = train(config())
    # micro-batches of 4 on each worker's 8 rows: no_sync skips the first pass's all-reduce
    cfg = config(micro_batch=4).to_dict()
    out = tmp_path / "ddp"
    out.mkdir()
    mp.spawn(_worker, args=(2, free_port(), str(out), cfg), nprocs=2, join=True)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[1] == {"rows": [], "summary": None}  # rank 0 alone reports
    rows, summary = ranks[0]["rows"], ranks[0]["summary"]
    assert [r["step"] for r in rows] == [m["step"] for m in one.metrics] == [4, 8, 12]
    for r, m in zip(rows, one.metrics, strict=True):
        assert r["tokens"] == m["tokens"]  # the same global batch
        assert r["train_loss"] == pytest.approx(m["train_loss"], rel=1e-6)
        assert r["val_loss"] == pytest.approx(m["val_loss"], rel=1e-6)
        assert math.isnan(r["mfu"])
    assert summary["status"] == "complete" and summary["steps"] == 12
    assert summary["final_test_loss"] == pytest.approx(one.summary["final_test_loss"], rel=1e-6)
    saved = json.loads((out / "summary.json").read_text())
    assert saved["final_val_loss"] == summary["final_val_loss"]
    assert (out / "checkpoints" / "last.pt").exists()


def test_data_parallel_needs_a_process_group():
    with pytest.raises(RuntimeError, match="initialised torch.distributed process group"):
        train_data_parallel(config())
