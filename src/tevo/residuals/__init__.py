"""Residual schemes: how a sublayer F, a norm and the skip connection combine."""
from .base import Residual  # noqa: F401
