"""Interop with other libraries: Hugging Face transformers (``tevo.interop.hf``, ``tevo convert``).

    from tevo.interop import from_hf, to_hf
"""
from __future__ import annotations


def __getattr__(name):
    # lazy: ``tevo convert`` imports this package at CLI start-up; nothing here needs more
    if name in ("from_hf", "hf_to_tevo", "to_hf", "tevo_to_hf", "ConversionError",
                "UnsupportedHFOption", "supported_model_types"):
        from . import hf
        return getattr(hf, name)
    raise AttributeError(f"module 'tevo.interop' has no attribute {name!r}")
