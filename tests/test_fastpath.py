"""The CUDA fast path, checked on the CPU: each switch is a function of the device, so its
logic runs here (torch.cuda mocked where the call itself is CUDA's)."""

import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from models import tiny

from spiralsearch.config import ConfigError, OptimConfig, TrialConfig
from spiralsearch.data.batches import Batches
from spiralsearch.data.dataset import as_batch, load_dataset
from spiralsearch.model.loss import lm_loss
from spiralsearch.model.transformer import build_model, compute_dtype
from spiralsearch.training import device as dev
from spiralsearch.training.checkpoint import load_checkpoint, save_checkpoint
from spiralsearch.training.loop import plan_trial, train
from spiralsearch.training.step import micro_batch, optimizer, train_step
from spiralsearch.training.world import World


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPIRALSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(dev.PEAK_FLOPS_ENV, raising=False)
    torch.set_num_threads(1)


def small(tokens=16 * 64 * 8, **train_opts):
    return TrialConfig.from_dict(dict(
        model=dict(spec="1+2x{1/4,1}+1", preset="tiny", d_model=32, n_heads=2),
        data=dict(source="corpus:sotu", seq_len=64),
        train=dict(batch_size=16, lr=3e-3, evals=2, eval_batches=2) | train_opts,
        budget=dict(kind="tokens", value=tokens)))


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters()}


# --- chunked cross-entropy ---------------------------------------------------------------


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_chunked_loss_and_gradients_equal_the_plain_loss(dtype, tol):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 17, 8, dtype=dtype, generator=g, requires_grad=True)
    w = torch.randn(37, 8, dtype=dtype, generator=g, requires_grad=True)
    y = torch.randint(0, 37, (3, 17), generator=g)
    plain = F.cross_entropy((h @ w.T).flatten(0, 1), y.flatten())
    gh, gw = torch.autograd.grad(plain, (h, w))
    for chunk in (1, 5, 16, 50):  # 51 tokens: uneven last chunk, and one chunk short of all
        loss = lm_loss(h, w, y, chunk)
        ch, cw = torch.autograd.grad(loss * 3.0, (h, w))  # the incoming gradient scales them
        assert loss.dtype == dtype  # fp32 or wider, as the plain loss
        assert abs(loss.item() - plain.item()) <= tol * plain.item()
        torch.testing.assert_close(ch, 3.0 * gh, rtol=tol, atol=tol)
        torch.testing.assert_close(cw, 3.0 * gw, rtol=tol, atol=tol)
        with torch.no_grad():  # evaluation: the loss alone, chunk by chunk
            assert abs(lm_loss(h, w, y, chunk).item() - plain.item()) <= tol * plain.item()


def test_chunked_loss_under_bf16_autocast_matches_the_plain_loss():
    """Under autocast the chunks' logits are bf16 products, upcast to fp32 for the softmax, as
    in the plain path; the gradients come back in the parameters' own dtypes."""
    g = torch.Generator().manual_seed(1)
    h = torch.randn(64, 16, generator=g, requires_grad=True)
    w = torch.randn(50, 16, generator=g, requires_grad=True)
    y = torch.randint(0, 50, (64,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = lm_loss(h, w, y, 0)
        chunked = lm_loss(h, w, y, 24)
    gh, gw = torch.autograd.grad(plain, (h, w))
    ch, cw = torch.autograd.grad(chunked, (h, w))
    assert plain.dtype == chunked.dtype == torch.float32
    assert ch.dtype == cw.dtype == torch.float32
    assert chunked.item() == pytest.approx(plain.item(), rel=1e-5)
    torch.testing.assert_close(ch, gh, rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(cw, gw, rtol=2e-2, atol=2e-3)


def test_chunked_loss_never_holds_the_whole_logits(monkeypatch):
    """Every head product has at most `chunk` rows: the (tokens, vocab) logits never exist."""
    model = build_model(tiny("1+1x{1/2,1}+1", vocab_size=97))
    x = torch.randint(0, 97, (4, 32))
    rows, linear = [], F.linear

    def spy(inp, weight, *args):
        if weight.shape[0] == 97:
            rows.append(inp.reshape(-1, inp.shape[-1]).shape[0])
        return linear(inp, weight, *args)

    monkeypatch.setattr(F, "linear", spy)
    model(x[:, :-1], x[:, 1:], 16).backward()
    assert rows and max(rows) <= 16 and sum(rows) == 4 * 31
    rows.clear()
    model(x[:, :-1], x[:, 1:], 0)  # chunk 0: the plain path, all at once
    assert rows == [4 * 31]


def test_model_loss_matches_its_logits_and_their_gradients():
    cfg = tiny("1+2x{1/4,1/2,1}+1", vocab_size=97)
    torch.manual_seed(0)
    model = build_model(cfg).double()
    x = torch.randint(0, 97, (3, 20))
    F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).backward()
    want = _grads(model)
    model.zero_grad()
    model(x[:, :-1], x[:, 1:], 7).backward()
    for name, grad in _grads(model).items():
        torch.testing.assert_close(grad, want[name], rtol=1e-10, atol=1e-12, msg=name)


# --- rotary tables in the compute dtype ---------------------------------------------------


def test_rotary_tables_follow_autocast_so_q_and_k_stay_in_its_dtype(monkeypatch):
    seen, sdpa = [], F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append((q.dtype, k.dtype))
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    model = build_model(tiny("1+1x{1/4,1}+1", rotary_pct=0.5))
    x = torch.randint(0, 17, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert compute_dtype(model.wte(x)) == torch.bfloat16
        model(x)
    assert seen and set(seen) == {(torch.bfloat16, torch.bfloat16)}  # coarse rope too
    seen.clear()
    model(x)  # no autocast: fp32 throughout
    assert set(seen) == {(torch.float32, torch.float32)}


# --- micro-batches ------------------------------------------------------------------------


def test_micro_batches_take_the_full_batch_step():
    """Gradient accumulation: micro-batches of 1, 2 or 4 sequences give the loss, gradients
    and AdamW step of the whole batch of 4, within float64 rounding."""
    cfg = tiny("1+2x{1/4,1}+1")
    x = torch.randint(0, 17, (4, 24))
    results = {}
    for micro in (4, 2, 1):
        torch.manual_seed(0)
        model = build_model(cfg).double()
        opt = optimizer(model, OptimConfig())
        loss = train_step(model, model, opt, x[:, :-1], x[:, 1:], micro_batch=micro,
                          loss_chunk=0, grad_clip=1.0)
        results[micro] = (loss, _grads(model), [p.detach().clone() for p in model.parameters()])
    loss, grads, params = results[4]
    for micro in (2, 1):
        m_loss, m_grads, m_params = results[micro]
        assert m_loss.item() == pytest.approx(loss.item(), rel=1e-12)
        for name in grads:
            torch.testing.assert_close(m_grads[name], grads[name], rtol=1e-9, atol=1e-12)
        for a, b in zip(m_params, params, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_micro_batches_keep_the_budget_and_the_curve():
    """The budget counts batch_size x seq_len tokens per step whatever the micro-batch; the
    loss curve matches the whole-batch run's within float32 rounding."""
    whole, micro = small(), small(micro_batch=4)
    assert plan_trial(micro) == plan_trial(whole)
    a, b = train(whole), train(micro)
    for ra, rb in zip(a.metrics, b.metrics, strict=True):
        assert (ra["step"], ra["tokens"], ra["train_flops"]) == (rb["step"], rb["tokens"],
                                                                 rb["train_flops"])
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-4)
        assert rb["val_loss"] == pytest.approx(ra["val_loss"], rel=1e-4)
    assert b.summary["train_flops"] == a.summary["train_flops"]


def test_micro_batch_must_divide_each_workers_share():
    with pytest.raises(ConfigError, match="train.micro_batch: 5 does not divide batch_size 16"):
        small(micro_batch=5)
    assert micro_batch(OptimConfig(batch_size=16, micro_batch=0), World(0, 2)) == 8
    assert micro_batch(OptimConfig(batch_size=16, micro_batch=16), World(1, 2)) == 8
    with pytest.raises(ConfigError, match="does not divide the 4 sequences"):
        micro_batch(OptimConfig(batch_size=24, micro_batch=3), World(0, 6))
    with pytest.raises(ConfigError, match="do not split evenly over 3"):
        World(0, 3).rows(16)


# --- the loss stays on the device ---------------------------------------------------------


def test_the_loss_is_read_once_per_evaluation_not_per_step(monkeypatch):
    """The loop reads the device (item/tolist) only at evaluations: 2 per evaluation (the
    training losses, the val loss) and 1 for the test split, whatever the step count."""
    reads = []
    for name in ("item", "tolist"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, **kw):
            if sys._getframe(1).f_globals.get("__name__", "").startswith("spiralsearch"):
                reads.append(sys._getframe(1).f_code.co_name)
            return _real(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, counted)
    result = train(small(tokens=16 * 64 * 12, evals=2))
    assert result.summary["steps"] == 12 and result.status == "complete"
    assert sorted(reads) == sorted(["read"] * 2 + ["evaluate"] * 3), reads


# --- batches: compact, pinned, built ahead ------------------------------------------------


def test_batches_are_compact_pinned_and_built_ahead(monkeypatch):
    ds = load_dataset("corpus:sotu")
    w = ds.get_windows("train", 8, 32, step=3, seed=1)
    assert w.dtype == torch.uint16 and w.shape == (8, 33)
    x, y = ds.get_batch("train", 8, 32, step=3, seed=1)
    assert x.dtype == torch.int64 and torch.equal(x, w[:, :-1].long())
    assert torch.equal(y, w[:, 1:].long())
    halves = [ds.get_windows("train", 8, 32, 3, 1, rows=slice(r * 4, r * 4 + 4))
              for r in range(2)]
    assert torch.equal(torch.cat(halves), w)  # two workers' shares are the one batch

    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: pinned.append(t) or t)
    cpu = torch.device("cpu")
    with Batches(ds, batch_size=8, seq_len=32, seed=1, device=cpu, first=3, pin=True) as b:
        assert b.background  # pinned batches are built on a thread, a step ahead
        for step in (3, 4, 5, 9, 10):  # in order, then a jump (a resume)
            bx, by = b.get(step)
            want = ds.get_batch("train", 8, 32, step, 1)
            assert torch.equal(bx, want[0]) and torch.equal(by, want[1])
    assert len(pinned) >= 5 and all(t.dtype == torch.uint16 for t in pinned)
    with Batches(ds, batch_size=8, seq_len=32, seed=1, device=cpu) as b:
        assert not b.pin and not b.background  # CPU: built in line, nothing pinned
    assert Batches(ds, batch_size=8, seq_len=32, seed=1, device=torch.device("meta"),
                   background=False).get(0)[0].device.type == "meta"  # widened there


def test_windows_of_a_large_vocabulary_stay_int64(tmp_path):
    ids = np.arange(5000, dtype=np.uint32) * 20  # ids up to 99,980
    path = tmp_path / "big.npy"
    np.save(path, ids)
    ds = load_dataset(f"tokens:{path}")
    w = ds.get_windows("train", 2, 8, 0)
    assert w.dtype == torch.int64 and torch.equal(as_batch(w)[0], w[:, :-1])


# --- fused AdamW, memory fence, MFU ---------------------------------------------------------


def test_adamw_is_fused_on_cuda_only():
    model = torch.nn.Linear(4, 4)
    assert optimizer(model, OptimConfig(), torch.device("cuda")).defaults["fused"]
    assert not optimizer(model, OptimConfig(), torch.device("cpu")).defaults["fused"]
    assert not optimizer(model, OptimConfig()).defaults["fused"]  # the parameters' device


def test_memory_fence_is_the_trials_gpu_share(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda share, device=None: calls.append(("fraction", share, device)))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append(("empty",)))
    gpu = torch.device("cuda", 0)
    dev.fence_memory(gpu, 0.25)
    assert calls == [("empty",), ("fraction", 0.25, gpu)]
    calls.clear()
    dev.fence_memory(gpu, 1.0)  # a whole GPU: nothing to cap, the cache still emptied
    assert calls == [("empty",)]
    dev.fence_memory(gpu, None)  # no share given (not packed by a sweep): left alone
    dev.fence_memory(torch.device("cpu"), 0.25)
    dev.release_memory(torch.device("cpu"))
    assert calls == [("empty",)]
    dev.release_memory(gpu)
    assert calls[-1] == ("empty",)


def test_train_passes_its_gpu_share_and_releases_memory(monkeypatch):
    import spiralsearch.training.loop as loop

    seen = []
    monkeypatch.setattr(loop, "fence_memory", lambda d, s: seen.append(("fence", d.type, s)))
    monkeypatch.setattr(loop, "release_memory", lambda d: seen.append(("release", d.type)))
    train(small(tokens=16 * 64 * 2), gpu_share=0.5)
    assert seen == [("fence", "cpu", 0.5), ("release", "cpu")]


def test_peak_flops_and_mfu(monkeypatch):
    assert dev.peak_flops(torch.device("cpu")) is None  # not guessed
    assert math.isnan(dev.mfu(1e4, 1e6, None))
    names = {"NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100 PCIe": 756e12,
             "NVIDIA H200": 989e12, "NVIDIA GH200 480GB": 989e12,
             "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA L40S": 362e12, "NVIDIA L4": 121e12,
             "Tesla T4": None}
    for name, peak in names.items():
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None, n=name: n)
        assert dev.peak_flops(torch.device("cuda")) == peak, name
    monkeypatch.setenv(dev.PEAK_FLOPS_ENV, "2e12")
    assert dev.peak_flops(torch.device("cpu")) == 2e12
    assert dev.mfu(1e4, 1e8, 2e12) == pytest.approx(0.5)
    assert dev.mfu(1e4, 1e8, 2e12, devices=2) == pytest.approx(0.25)
    monkeypatch.setenv(dev.PEAK_FLOPS_ENV, "-1")
    with pytest.raises(ValueError, match="SPIRALSEARCH_PEAK_FLOPS"):
        dev.peak_flops(torch.device("cpu"))


def test_every_evaluation_reports_mfu(monkeypatch):
    cfg = small(tokens=16 * 64 * 4)
    rows = train(cfg).metrics
    assert rows and all("mfu" in r and math.isnan(r["mfu"]) for r in rows)  # CPU: no peak
    monkeypatch.setenv(dev.PEAK_FLOPS_ENV, "1e11")
    fpt = plan_trial(cfg).flops_per_token
    for r in train(cfg).metrics:
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * fpt / 1e11)


# --- checkpoints ----------------------------------------------------------------------------


def _stepped():
    torch.manual_seed(0)
    model = build_model(tiny("1+1x{1/2,1}+1"))
    opt = optimizer(model, OptimConfig())
    x = torch.randint(0, 17, (2, 9))
    train_step(model, model, opt, x[:, :-1], x[:, 1:], micro_batch=2, loss_chunk=0,
               grad_clip=1.0)
    return model, opt


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")
def test_checkpoints_load_onto_the_cpu_and_keep_the_rng_there(tmp_path, monkeypatch):
    """A checkpoint loads into a model and optimiser on another device (meta here, as CUDA
    would be): the RNG state comes back from the CPU, AdamW's step counts stay on the CPU,
    its moments move to the parameters' device."""
    model, opt = _stepped()
    torch.manual_seed(1234)
    saved_rng = torch.get_rng_state()
    path = tmp_path / "last.pt"
    save_checkpoint(path, model, opt, 7, [{"step": 7}], 1.5)
    torch.manual_seed(99)
    maps, load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: maps.append(kw["map_location"])
                        or load(*a, **kw))
    with torch.device("meta"):
        meta_model = build_model(tiny("1+1x{1/2,1}+1"))
    meta_opt = optimizer(meta_model, OptimConfig(), torch.device("meta"))
    run = load_checkpoint(path, meta_model, meta_opt)
    assert maps == ["cpu"]
    assert (run.step, run.metrics, run.wall_seconds) == (7, [{"step": 7}], 1.5)
    assert torch.equal(torch.get_rng_state(), saved_rng)
    states = list(meta_opt.state.values())
    assert states and all(s["step"].device.type == "cpu" for s in states)
    assert all(s["exp_avg"].device.type == "meta" for s in states)
    assert all(p.device.type == "meta" for p in meta_model.parameters())


def test_cuda_rng_is_saved_and_restored_when_cuda_is_there(tmp_path, monkeypatch):
    model, opt = _stepped()
    cuda_states = [torch.arange(16, dtype=torch.uint8), torch.arange(16, 32, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: cuda_states)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    path = tmp_path / "last.pt"
    save_checkpoint(path, model, opt, 1, [], 0.0)
    load_checkpoint(path, model, opt)
    assert len(restored) == 1 and all(s.device.type == "cpu" for s in restored[0])
    assert [s.tolist() for s in restored[0]] == [s.tolist() for s in cuda_states]
    dev.restore_rng(torch.get_rng_state())  # a checkpoint from before: the CPU state alone


@pytest.mark.slow
def test_the_model_and_its_chunked_loss_compile_to_one_graph():
    """torch.compile traces forward and the chunked loss's autograd function without a graph
    break (fullgraph; the aot_eager backend generates no code, so this takes seconds, not
    the minutes inductor takes on this CPU), and the compiled loss and gradients are eager's."""
    torch.manual_seed(0)
    model = build_model(tiny("1+2x{1/4,1}+1"))
    x = torch.randint(0, 17, (2, 33))
    model(x[:, :-1], x[:, 1:], 16).backward()
    want = _grads(model)
    model.zero_grad()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    compiled(x[:, :-1], x[:, 1:], 16).backward()
    for name, grad in _grads(model).items():
        torch.testing.assert_close(grad, want[name], rtol=1e-5, atol=1e-7, msg=name)


def test_the_gpu_benchmark_runs_where_only_torch_is_installed(tmp_path):
    """benchmarks/gpu.py at toy size with Ray, DuckDB and Optuna unimportable (a GPU box
    with only torch): both models are measured through `train`, and the packed sweep is
    skipped with the reason, in the file."""
    import json
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "gpu.json"
    code = ("import sys, runpy\n"
            "for m in ('ray', 'duckdb', 'optuna', 'fvcore', 'pandas'): sys.modules[m] = None\n"
            f"sys.argv = ['gpu.py', '--toy', '--device', 'cpu', '--out', {str(out)!r}]\n"
            f"runpy.run_path({str(root / 'benchmarks' / 'gpu.py')!r}, run_name='__main__')\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=root, env={"PYTHONPATH": str(root), "SPIRALSEARCH_CACHE":
                                        str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result["models"]) == {"plain-160m", "spiral"}
    for m in result["models"].values():
        assert m["status"] == "complete" and m["tokens_per_s"] > 0 and m["mfu"] is None
    assert result["packed_sweep"] == {"skipped": "ray not installed here"}
    assert "packed sweep skipped: ray not installed here" in run.stdout
