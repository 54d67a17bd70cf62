"""The suite covers every registered name: fails if a registry entry escapes parameterisation,
and every declared paper test exists."""
from __future__ import annotations

import pytest

from tevo.catalog import paper_test_exists
from tevo.registry import REGISTRIES

SUITES = {
    "mixer": ("test_mixers.py", "test_shape_and_finite_fp32_and_bf16"),
    "ffn": ("test_components.py", "test_ffn_shape_finite_grad"),
    "norm": ("test_components.py", "test_norm_shape_finite_grad_and_per_token"),
    "residual": ("test_components.py", "test_residual_shape_finite_grad"),
    "activation": ("test_components.py", "test_activation_shape_and_finite"),
    "position": ("test_components.py", "test_position_in_a_model_cache_and_grad"),
    "model": ("test_models.py", "test_builds_runs_and_gets_gradients"),
    "memory": ("test_memories.py", "test_memory_segments_shape_finite_grad"),
}


@pytest.mark.parametrize("kind", sorted(SUITES))
def test_every_registered_name_is_parameterised(kind, request):
    fname, fn = SUITES[kind]
    ids = set()
    for item in request.session.items:
        if item.fspath.basename == fname and item.originalname == fn:
            ids.add(item.callspec.id.rsplit("-", 1)[0] if kind == "mixer" else item.callspec.id)
    if not ids:
        pytest.skip("conformance suite not collected in this run")
    missing = set(REGISTRIES[kind].names()) - ids
    if kind == "model":
        missing = set(REGISTRIES[kind].names()) - {i.split(":", 1)[1] for i in ids if ":" in i}
    assert not missing, f"{kind}s missing from the conformance suite: {sorted(missing)}"


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_declared_paper_tests_exist(kind):
    bad = [(e.name, e.test) for e in REGISTRIES[kind].entries()
           if e.test and paper_test_exists(e.test) is False]
    assert not bad, f"declared paper tests that do not exist: {bad}"
