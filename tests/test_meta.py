"""A training step entirely on the meta device, for every topology, resampler and schedule
option: forward (plain and chunked loss, micro-batches), backward, gradient clipping and an
AdamW step. A tensor made on the CPU in the hot path (a position table, a mask, a constant)
meets meta tensors and raises, so none hides there to cost a copy per step on a GPU."""

import pytest
import torch
from models import tiny

from spiralsearch.config import OptimConfig
from spiralsearch.model.config import CHOICES
from spiralsearch.model.transformer import build_model
from spiralsearch.training.step import LossSum, optimizer, train_step

SPIRAL = "1+2x{1/4@3,1/2@1,1}+1"
BOOLS = ("parallel_residual", "embed_scale", "bias")


def _covering(n: int = 4) -> list[dict]:
    """n option sets that between them take every value of every option (meta kernels run
    in Python, ~1 s a step: one case per option value would take a minute)."""
    cases = []
    for k in range(n):
        case = {name: values[k % len(values)] for name, values in CHOICES.items()}
        case |= {name: bool(k % 2) for name in BOOLS}
        if k >= 2:  # both MeSH initialisations, with the topology that uses them
            case |= dict(topology="mesh", mesh_init=("embed", "loop_input")[k % 2])
        cases.append(case)
    return cases


_MODELS = ([(spec, {}) for spec in ("4", "1+2x{1,1}+1", "0+1x{1/8,1/2}+0")]
           + [(SPIRAL, case) for case in _covering()])
# alternately the plain loss in one pass, and the chunked loss over two micro-batches
CASES = [(spec, options, *((4, 0), (2, 16))[i % 2]) for i, (spec, options) in enumerate(_MODELS)]


def test_the_cases_cover_every_option_value():
    seen = {(k, v) for _, case, *_ in CASES for k, v in case.items()}
    assert {(k, v) for k, values in CHOICES.items() for v in values} <= seen
    assert {(k, v) for k in BOOLS for v in (True, False)} <= seen


@pytest.mark.parametrize("spec, options, micro, chunk", CASES, ids=str)
def test_a_training_step_runs_on_the_meta_device(spec, options, micro, chunk):
    meta = torch.device("meta")
    with meta:
        model = build_model(tiny(spec, max_seq_len=32, **options))
    opt = optimizer(model, OptimConfig(), meta)
    windows = torch.randint(0, 17, (4, 25), device=meta)
    x, y = windows[:, :-1], windows[:, 1:]
    losses = LossSum(meta)
    loss = train_step(model, model, opt, x, y, micro_batch=micro, loss_chunk=chunk,
                      grad_clip=1.0)
    assert loss.device == meta and loss.shape == ()
    losses.add(loss, 0)
    assert losses.sum.device == meta and losses.first_bad.device == meta
    # every parameter takes part in every step (so DDP needs no unused-parameter search)
    assert all(p.grad is not None and p.grad.device == meta for p in model.parameters())
    assert all(p.device == meta for p in model.parameters())
    assert all(s["exp_avg"].device == meta for s in opt.state.values())
    assert len(opt.state) == len(list(model.parameters()))
