import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(1)  # tiny tensors: threading overhead dominates


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    """Tests marked ``legacy_hf`` need a transformers release that still ships TransfoXL
    (<= 4.37.2). Where this environment's transformers lacks it they are deselected here and
    run in the side environment by tests/test_interop_legacy.py, so they are never skipped."""
    from tiny import hf_transfo_xl
    legacy = [i for i in items if i.get_closest_marker("legacy_hf")]
    if legacy and hf_transfo_xl() is None:
        config.hook.pytest_deselected(items=legacy)
        items[:] = [i for i in items if not i.get_closest_marker("legacy_hf")]
