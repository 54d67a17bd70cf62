"""Token mixers, one family a folder. Every module here is imported by the registry."""
from .base import Mixer, Supports  # noqa: F401
