"""spiralsearch: architecture search and scaling laws for looped, multi-resolution Transformers."""

from spiralsearch.model import PRESETS, ConfigError, ModelConfig, build_model
from spiralsearch.spec import Iteration, Spec, SpecError, parse_spec

__all__ = [
    "PRESETS", "ConfigError", "Iteration", "ModelConfig", "Spec", "SpecError", "build_model",
    "parse_spec",
]
__version__ = "0.1.0"
