"""Position encodings with `input`, `qk` and `bias` hooks."""
from .base import PositionEncoding  # noqa: F401
