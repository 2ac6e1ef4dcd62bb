"""One trial's configuration: the typed tree every stage reads (docs/design.md §8).

    config = TrialConfig.from_dict({"model": {"spec": "1+2x{1/4,1}+1", "preset": "tiny"},
                                    "budget": {"kind": "flops", "value": 3e12}})
    config.model        # the resolved ModelConfig: preset widths, data vocabulary, seq_len
    config.trial_id     # the trial's identity: hash of its canonical dict (identity.py)
    config.to_dict()    # canonical nested dict; from_dict(to_dict()) == config

Sections are `Config` dataclasses whose fields carry their own help text, domain check and
allowed values (`opt(...)`), so the YAML checks, the CLI flags and the key reference all read
one owner. `from_dict` refuses unknown keys (with a did-you-mean) and bad values with a
one-line `ConfigError` that starts with the key path.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from spiralsearch.data.sources import DataError, parse_source
from spiralsearch.fields import (
    ConfigError,
    FieldSpec,
    check_keys,
    check_value,
    field_specs,
    opt,
)
from spiralsearch.identity import config_hash
from spiralsearch.limits import within
from spiralsearch.model.config import ModelConfig

__all__ = ["BUDGET_KINDS", "Budget", "BudgetError", "Config", "ConfigError", "DataConfig",
           "FieldSpec", "OptimConfig", "TrialConfig", "check_keys", "check_value",
           "config_hash", "data_vocab", "field_specs", "opt"]

BUDGET_KINDS = ("flops", "tokens", "params")


class BudgetError(ValueError):
    """A budget that cannot be met (too small, too far off, or malformed)."""


class Config:
    """Base of the config sections: dict/YAML form in and out through one mechanism."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, path: str = ""):
        """From a plain mapping; unknown keys and bad values raise ConfigError naming the
        key path (`path` is this section's own, e.g. "train")."""
        specs = field_specs(cls)
        d = check_keys(path, d, tuple(specs))
        prefix = f"{path}." if path else ""
        return cls(**{k: check_value(prefix + k, v, specs[k]) for k, v in d.items()})

    def to_dict(self) -> dict[str, Any]:
        """Every field, plain values."""
        return dataclasses.asdict(self)

    def replace(self, **changes):
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


_GT0 = dict(check=lambda v: v > 0, what="> 0")
_GE0 = dict(check=lambda v: v >= 0, what=">= 0")
_UNIT = dict(check=lambda v: 0 <= v <= 1, what="a value in [0, 1]")
_BETA = dict(check=lambda v: 0 <= v < 1, what="a value in [0, 1)")


def _tokenizer_ok(v: str) -> bool:
    return v == "bytes" or bool(re.fullmatch(r"bpe:\d+", v)) and int(v[4:]) >= 256


def _source_ok(v: str) -> bool:
    try:
        parse_source(v)
    except DataError as e:  # the source's own message is the better one: raise it as ours
        raise ConfigError(f"data.source: {e}") from None
    return True


# --- the sections ----------------------------------------------------------------------------

@dataclass(frozen=True)
class DataConfig(Config):
    """Where tokens come from (see spiralsearch.data.dataset) and the training context (tokens)."""

    source: str = opt("corpus:sotu", "data source: corpus:NAME, synthetic:..., text:PATH, "
                      "tokens:PATH", check=_source_ok, what="a data source")
    tokenizer: str = opt("bytes", "bytes (vocab 256) or bpe:N (trained on the train split)",
                         check=_tokenizer_ok, what="'bytes' or 'bpe:N' with N >= 256")
    seq_len: int = opt(256, "training context (tokens)", **within("seq_len"))
    val_fraction: float = opt(0.1, "share of documents held out for validation (selection)",
                              check=lambda v: 0 < v < 1, what="a value in (0, 1)")
    test_fraction: float = opt(0.1, "share of documents held out for test (fits, reports)",
                               check=lambda v: 0 <= v < 1, what="a value in [0, 1)")
    # apart from the training seed, so trials with different seeds score the same data
    split_seed: int = opt(0, "seed that picks the validation and test documents",
                          **within("seed", 0))

    def __post_init__(self) -> None:
        if self.val_fraction + self.test_fraction >= 1:
            raise ConfigError(f"data.test_fraction: {self.test_fraction} + val_fraction "
                              f"{self.val_fraction} leaves no training split")


@dataclass(frozen=True)
class OptimConfig(Config):
    """The `train:` section: optimiser, schedule, evaluation and run settings."""

    lr: float = opt(1e-3, "peak learning rate", **_GT0)
    batch_size: int = opt(16, "sequences per step", **within("batch_size"))
    weight_decay: float = opt(0.1, "AdamW weight decay (matrices only)", **_GE0)
    beta1: float = opt(0.9, "AdamW beta1", **_BETA)
    beta2: float = opt(0.95, "AdamW beta2", **_BETA)
    warmup_frac: float = opt(0.05, "share of steps in linear warmup", **_UNIT)
    min_lr_frac: float = opt(0.1, "cosine decays to this share of lr", **_UNIT)
    grad_clip: float = opt(1.0, "gradient-norm clip", **_GT0)
    evals: int = opt(10, "evaluations (and checkpoints) over the run, the last at the end",
                     **within("evals"))
    eval_batches: int = opt(8, "validation batches per evaluation", **within("eval_batches"))
    seed: int = opt(0, "init and data-order seed", **within("seed", 0))
    device: str = opt("auto", "auto | cpu | cuda | cuda:N",
                      check=lambda v: bool(re.fullmatch(r"auto|cpu|cuda(:\d+)?", v)),
                      what="auto, cpu, cuda or cuda:N")
    threads: int = opt(0, "torch CPU threads; 0 leaves torch's default", **_GE0)
    # opt in: compiling costs minutes per trial (on this 2-core CPU more than it saves for
    # minutes-long trials, benchmarks/results/compile.json) and has not yet run on a GPU;
    # auto compiles on CUDA only. Not part of a trial's identity (identity.EXECUTION).
    compile: str = opt("off", "torch.compile the model: off, on, or auto (on CUDA only)",
                       choices=("off", "on", "auto"))
    # gradient accumulation: a step is still batch_size sequences (budgets count those)
    micro_batch: int = opt(0, "sequences per forward/backward pass, gradients summed over the "
                           "step's micro-batches (per data-parallel worker); 0: the whole "
                           "batch at once", **_GE0)
    # 4096 tokens x a 50,304 vocabulary is 0.8 GB of fp32 logits, against 13 GB for the
    # whole of a 32 x 2048 batch
    loss_chunk: int = opt(4096, "tokens whose logits the loss computes at once; a larger "
                          "batch goes chunk by chunk and never holds all its logits; 0: "
                          "all at once", **_GE0)

    def __post_init__(self) -> None:
        if self.micro_batch and self.batch_size % self.micro_batch:
            raise ConfigError(f"train.micro_batch: {self.micro_batch} does not divide "
                              f"batch_size {self.batch_size}")


@dataclass(frozen=True)
class Budget(Config):
    """What a trial may spend: `kind` in BUDGET_KINDS and its `value` (training FLOPs,
    tokens or non-embedding parameters). A `params` budget also needs `tokens`, the
    training length. The one shape a budget has from the YAML to the store."""

    kind: str = opt("tokens", "flops (training FLOPs), tokens, or params (non-embedding)",
                    choices=BUDGET_KINDS)
    value: float = opt(1e6, "the budget, in the kind's unit", **_GT0)
    tokens: float | None = opt(None, "training tokens of a params budget", **_GT0)
    # off: a budget that whole steps miss by more than 1% is refused (docs/design.md §3)
    snap: bool = opt(False, "move the budget to the nearest whole step, saying so, instead "
                     "of refusing one that whole steps miss by more than 1%")

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise BudgetError(f"budget kind {self.kind!r} is not one of {', '.join(BUDGET_KINDS)}")
        if not self.value > 0:
            raise BudgetError(f"{self.kind} budget must be > 0, got {self.value}")
        if not math.isfinite(self.value):
            raise BudgetError(f"{self.kind} budget must be finite, got {self.value}")
        if self.kind == "params" and not (self.tokens or 0) > 0:
            raise BudgetError("a params budget needs the training length too: budget tokens > 0")
        if self.tokens is not None and not math.isfinite(self.tokens):
            raise BudgetError(f"budget tokens must be a finite number > 0, got {self.tokens}")

    def to_dict(self) -> dict[str, Any]:
        """Every field, but `snap` only when on: a budget that is not snapped keeps the
        identity (trial id) it had before snapping existed."""
        d = super().to_dict()
        if not self.snap:
            del d["snap"]
        return d

    @property
    def unit(self) -> str:
        return {"flops": "FLOPs", "tokens": "tokens", "params": "params"}[self.kind]

    def __str__(self) -> str:
        return f"{self.value:.4g} {self.unit}"


def data_vocab(data: DataConfig) -> int | None:
    """The data's vocabulary when the config alone tells it: 256 for bytes, N for bpe:N,
    vocab=N of a tokens: source; None for a tokens: file without vocab= (its ids decide)."""
    if data.tokenizer.startswith("bpe:"):
        return int(data.tokenizer[4:])
    src = parse_source(data.source)
    if src.kind == "tokens":
        return int(src.options.get("vocab", 0)) or None
    return 256


def resolve_model(model: Mapping[str, Any], data: DataConfig, path: str = "model"
                  ) -> tuple[ModelConfig, str | None]:
    """The one resolver of a model section ({spec, preset, options...}): preset widths,
    then options; max_seq_len defaults to data.seq_len and the data's vocabulary wins over
    the preset's. Returns (ModelConfig, preset)."""
    opts = dict(model)
    spec, preset = opts.pop("spec", "4"), opts.pop("preset", None)
    floats = {k for k, f in field_specs(ModelConfig).items() if f.type is float}
    # an int range (or YAML `4`) for a float option: 4 and 4.0 must be one trial
    opts = {k: float(v) if k in floats and type(v) is int else v for k, v in opts.items()}
    opts.setdefault("max_seq_len", data.seq_len)
    vocab = data_vocab(data)
    if vocab is not None:
        opts["vocab_size"] = vocab
    try:
        return ModelConfig.from_spec(spec, preset, **opts), preset
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


SECTIONS = ("model", "data", "train", "budget")


@dataclass(frozen=True)
class TrialConfig:
    """A whole trial: the resolved `model`, its `preset` (a label: the widths it came from),
    `data`, `train` and `budget`. Build it with `from_dict`; `to_dict` gives every field, so
    a stored config rebuilds the same trial."""

    model: ModelConfig = field(default_factory=lambda: resolve_model({}, DataConfig())[0])
    preset: str | None = "tiny"
    data: DataConfig = DataConfig()
    train: OptimConfig = OptimConfig()
    budget: Budget = Budget()

    SECTIONS: ClassVar[tuple[str, ...]] = SECTIONS

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrialConfig:
        """From nested dicts (YAML / JSON / the store's `config` column). The model section
        defaults to {"spec": "4", "preset": "tiny"}; ConfigError names any bad key."""
        d = check_keys("", d, SECTIONS)
        data = DataConfig.from_dict(d.get("data"), "data")
        model = dict(d.get("model") or {"spec": "4", "preset": "tiny"})
        cfg, preset = resolve_model(model, data)
        return cls(model=cfg, preset=preset, data=data,
                   train=OptimConfig.from_dict(d.get("train"), "train"),
                   budget=Budget.from_dict(d.get("budget"), "budget"))

    def to_dict(self) -> dict[str, Any]:
        """The canonical nested dict (spec as its canonical string, every field present)."""
        return dict(model={"preset": self.preset} | self.model.to_dict(),
                    data=self.data.to_dict(), train=self.train.to_dict(),
                    budget=self.budget.to_dict())

    @property
    def trial_id(self) -> str:
        """The trial's identity in the store: config_hash of `to_dict()`, which leaves out
        how its steps run (identity.EXECUTION). Take it from the config as requested:
        filling in where it runs (threads, an `auto` device) is not a new trial, so the
        sweep worker does that after reading the id."""
        return config_hash(self.to_dict())

    @property
    def point_id(self) -> str:
        """The point this trial measures: config_hash of `to_dict()` without train.seed, so
        the replicates (seeds) of one configuration share it (docs/design.md §4)."""
        d = self.to_dict()
        del d["train"]["seed"]
        return config_hash(d)

    def replace(self, **sections) -> TrialConfig:
        """A copy with some sections replaced (e.g. train=...)."""
        return dataclasses.replace(self, **sections)
