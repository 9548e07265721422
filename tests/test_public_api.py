"""The public surface: `surgery.__all__` is complete, sorted, and has every name the issues promise."""

from __future__ import annotations

import inspect
import subprocess
import sys
import types

import surgery

# Exact names from the issues (users' code depends on them).
REQUIRED = {
    # issue 2: foundation
    "Path",
    "parse_path",
    "get",
    "find",
    "replace",
    "delete",
    "insert",
    "tree",
    "SurgeryError",
    "PathSyntaxError",
    "PathNotFoundError",
    # issue 3: cut, split, compose, heads, verification
    "take",
    "cut",
    "split",
    "compose",
    "replace_head",
    "adapt_input",
    "create_head",
    "summary",
    "verify",
    "ShapeMismatchError",
    "VerificationError",
    # issue 4: freezing, groups, cache
    "freeze",
    "unfreeze",
    "layer_groups",
    "param_groups",
    "freeze_to",
    "precompute",
    "FeatureCache",
    "StaleCacheError",
    "trainable",
    # issue 5: loading
    "load_partial",
    "LoadReport",
    "save_state_dict",
    "LoadError",
    "CheckpointError",
    # issue 10: the edit engine, exported types
    "EditPlan",
    "Edit",
    "AdaptiveConcatPool2d",
    "FrozenBatchNormNd",
    # issue 12: swapping by pattern and type
    "swap",
    "SwapReport",
}


def test_all_has_every_required_name() -> None:
    missing = REQUIRED - set(surgery.__all__)
    assert not missing, f"missing from surgery.__all__: {sorted(missing)}"


def test_all_is_sorted_unique_and_resolvable() -> None:
    assert surgery.__all__ == sorted(surgery.__all__)
    assert len(set(surgery.__all__)) == len(surgery.__all__)
    for name in surgery.__all__:
        assert hasattr(surgery, name), name


def test_all_is_complete() -> None:
    public = {
        name
        for name, value in vars(surgery).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public - set(surgery.__all__) == set()


def test_every_error_is_a_surgery_error_and_documented() -> None:
    from surgery import _errors

    for name in _errors.__all__:
        cls = getattr(_errors, name)
        if issubclass(cls, Warning):
            assert issubclass(cls, surgery.SurgeryWarning)
            continue
        assert issubclass(cls, surgery.SurgeryError), name
        assert name in (_errors.__doc__ or ""), f"{name} missing from the exception tree docstring"
        assert cls.__doc__, name
    assert issubclass(surgery.CheckpointError, surgery.LoadError)


def test_public_functions_have_docstrings_with_examples() -> None:
    for name in surgery.__all__:
        obj = getattr(surgery, name)
        if inspect.isfunction(obj):
            doc = inspect.getdoc(obj) or ""
            assert ">>>" in doc, f"surgery.{name} has no runnable example"


def test_testing_module_is_public_and_import_surgery_does_not_need_hypothesis() -> None:
    import surgery.testing

    assert hasattr(surgery.testing, "cut_points")
    code = (
        "import sys; sys.modules['hypothesis'] = None; import surgery; "
        "assert 'hypothesis' not in [m for m in sys.modules if sys.modules[m] is not None]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
