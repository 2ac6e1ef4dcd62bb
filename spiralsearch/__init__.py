"""spiralsearch: architecture search and scaling laws for looped, multi-resolution Transformers."""

from spiralsearch.spec import Iteration, Spec, SpecError, parse_spec

__all__ = ["Iteration", "Spec", "SpecError", "parse_spec"]
__version__ = "0.1.0"
