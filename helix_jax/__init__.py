"""helix_jax: split a transformer over a device mesh, check it, and read its cost off the program."""

from helix_jax.config import PRESETS, ModelConfig, resolve_model
from helix_jax.layouts import LAYOUTS, Layout, parse_layout

__version__ = "0.1.0"

__all__ = ["LAYOUTS", "PRESETS", "Layout", "ModelConfig", "parse_layout", "resolve_model"]
