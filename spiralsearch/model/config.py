"""What defines a model (docs/design.md §1): `ModelConfig` (the spec fixes depth and loop
layout, the rest width), the presets, and the allowed values of every option. Every size is
bounded (spiralsearch/limits.py), so a config that builds is one `describe` can count in
seconds. Plain Python: the CLI and the YAML checks read it without importing torch.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field, fields, replace

from spiralsearch.fields import ConfigError, FieldSpec, check_value, field_specs, opt
from spiralsearch.limits import at_most, too_large, within
from spiralsearch.model.spec import Spec, parse_spec

__all__ = ["CHOICES", "PRESETS", "PRESET_LAYERS", "ConfigError", "ModelConfig"]

TOPOLOGIES = ("residual", "anchor", "mesh")
MESH_INIT = ("embed", "loop_input")  # what MeSH slot 0 starts as
DOWNSAMPLE = ("mean", "score")
UPSAMPLE = ("repeat", "allocate")
SHIFT = ("minimal", "no_overlap")
COARSE_POSITIONS = ("chunk", "token")

# Width, heads, MLP and vocab; the spec fixes the depth layout. Pythia rows: docs/design.md §1.6.
_PYTHIA = dict(mlp_ratio=4.0, vocab_size=50304, rotary_pct=0.25, parallel_residual=True,
               bias=True, max_seq_len=4096)
PRESETS: dict[str, dict] = {
    "tiny": dict(d_model=64, n_heads=4, mlp_ratio=4.0, vocab_size=256, rotary_pct=0.25,
                 parallel_residual=False, bias=True, max_seq_len=1024),
    "pythia-160m": dict(_PYTHIA, d_model=768, n_heads=12),
    "pythia-410m": dict(_PYTHIA, d_model=1024, n_heads=16),
    "pythia-1b": dict(_PYTHIA, d_model=2048, n_heads=8),
    "pythia-1.4b": dict(_PYTHIA, d_model=2048, n_heads=16),
}
# The depth each preset was published with (used when no spec is given).
PRESET_LAYERS = {"tiny": 4, "pythia-160m": 12, "pythia-410m": 24, "pythia-1b": 16,
                 "pythia-1.4b": 24}

CHOICES = {"topology": TOPOLOGIES, "mesh_init": MESH_INIT, "downsample": DOWNSAMPLE,
           "upsample": UPSAMPLE, "coarse_positions": COARSE_POSITIONS, "shift": SHIFT}


def _positive(what: str = "a finite number > 0") -> dict:
    return dict(check=lambda v: math.isfinite(v) and v > 0, what=what)


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a model. `spec` fixes depth and loop layout; the rest width."""

    spec: Spec = field(default_factory=lambda: parse_spec("4"))
    d_model: int = opt(64, "model width", **within("d_model"))
    n_heads: int = opt(4, "attention heads (must divide d_model)", **within("n_heads"))
    mlp_ratio: float = opt(4.0, "MLP width / d_model", **_positive(
        "a finite number > 0 giving an MLP width int(mlp_ratio x d_model) in [1, 1,048,576]"))
    vocab_size: int = opt(256, "vocabulary size (a trial takes its data's: 256 for bytes, N "
                          "for bpe:N)", **within("vocab_size"))
    rotary_pct: float = opt(0.25, "fraction of each head's dims with rotary embeddings",
                            check=lambda v: 0.0 <= v <= 1.0, what="a value in [0, 1]")
    rotary_base: float = opt(10000.0, "rotary base", **_positive())
    parallel_residual: bool = opt(False, "GPT-NeoX parallel residual: x + attn(ln1 x) + "
                                  "mlp(ln2 x)")
    bias: bool = opt(True, "biases in linear layers and norms")
    max_seq_len: int = opt(1024, "longest input (tokens; a trial's default is data.seq_len)",
                           **within("seq_len"))
    topology: str = opt("mesh", "loop topology (mesh, the paper's; residual and anchor for "
                        "ablations)")
    mesh_slots: int | None = opt(None, "MeSH buffer slots (default T + 3)",
                                 **within("mesh_slots"))
    mesh_init: str = opt("embed", "MeSH slot 0: token embeddings, or loop_input (pre-block "
                         "output)")
    downsample: str = opt("score", "chunk pooling")
    upsample: str = opt("allocate", "chunk-to-token split")
    coarse_positions: str = opt("chunk", "rotary position of a chunk latent")
    shift: str = opt("minimal", "causal right-shift")
    embed_scale: bool = opt(False, "multiply token embeddings by sqrt(d_model), as MeSH does")
    norm_eps: float = opt(1e-5, "LayerNorm epsilon", **_positive())
    init_std: float = opt(0.02, "init standard deviation", **_positive())

    def __post_init__(self) -> None:
        object.__setattr__(self, "spec", parse_spec(self.spec))
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r} is not one of "
                                  f"{', '.join(allowed)}")
        for name, spec in _specs().items():  # each field's type and domain, as opt() says
            if name != "spec":
                check_value(name, getattr(self, name), spec)
        if self.d_model % self.n_heads:
            raise ConfigError(f"n_heads={self.n_heads} does not divide d_model={self.d_model}")
        if self.d_mlp < 1:
            raise ConfigError(f"mlp_ratio={self.mlp_ratio} gives an MLP of {self.d_mlp} units "
                              f"at d_model={self.d_model}; need at least 1")
        if not at_most("d_mlp", self.d_mlp):
            raise ConfigError(too_large("d_mlp", self.d_mlp, f"MLP width (mlp_ratio="
                                        f"{self.mlp_ratio} x d_model={self.d_model})"))

    @classmethod
    def from_spec(cls, spec: str | Spec, preset: str | None = None, **options) -> ModelConfig:
        """A config from spec notation, a preset's width (see PRESETS) and option overrides."""
        known = {f.name for f in fields(cls)} - {"spec"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown model option(s) {', '.join(unknown)}; "
                              f"allowed: {', '.join(sorted(known))}")
        if preset is not None and preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")
        base = dict(PRESETS[preset]) if preset else {}
        base.update({k: v for k, v in options.items() if v is not None})
        return cls(spec=parse_spec(spec), **base)

    def replace(self, **changes) -> ModelConfig:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain-JSON form (spec as its canonical string)."""
        d = asdict(self)
        d["spec"] = str(self.spec)
        return d

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def d_mlp(self) -> int:
        return int(self.mlp_ratio * self.d_model)

    @property
    def rotary_dim(self) -> int:
        """Rotated dims per head (even, as rotation acts on pairs)."""
        return int(self.head_dim * self.rotary_pct) // 2 * 2


@functools.cache
def _specs() -> dict[str, FieldSpec]:
    """ModelConfig's field specs, read once (type hints are slow to resolve)."""
    return field_specs(ModelConfig)
