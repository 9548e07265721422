"""What the CLI's arguments name: model specs, ``--kwargs``, ``--input`` shapes, sources.

A model SPEC is ``torchvision:NAME`` (built with every ``weights*`` argument of
the builder set to ``None``: nothing is downloaded) or ``package.module:callable``
(called with ``--kwargs``, by default with no arguments). Commands that also
read checkpoints take an existing file or directory in place of a SPEC.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .._boundary import user_call
from .._errors import ArgumentError
from ..checkpoint import TensorInfo, open_source

__all__ = [
    "checkpoint_infos",
    "load_model_spec",
    "no_download_kwargs",
    "parse_kwargs",
    "parse_shape",
]

SPEC_FORMS = "torchvision:NAME or package.module:callable"


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` (or ``1x3x224x224``) -> ``(1, 3, 224, 224)``.

    Example:
        >>> parse_shape("1x3x32x32")
        (1, 3, 32, 32)
    """
    parts = text.replace("x", ",").replace(" ", "").strip("()[]").split(",")
    try:
        dims = tuple(int(p) for p in parts if p)
    except ValueError:
        raise ArgumentError(f"--input must be integers such as 1,3,224,224, got {text!r}") from None
    if not dims or any(d <= 0 for d in dims):
        raise ArgumentError(f"--input must be positive integers such as 1,3,224,224, got {text!r}")
    return dims


def add_kwargs_option(parser: Any, flag: str = "--kwargs", what: str = "the model's") -> None:
    """Add the JSON ``--kwargs`` option (read with :func:`parse_kwargs`) to a subcommand."""
    parser.add_argument(
        flag,
        default=None,
        metavar="JSON",
        help=f"keyword arguments for {what} builder as JSON, e.g. '{{\"num_classes\": 10}}'",
    )


def parse_kwargs(text: str | None, option: str = "--kwargs") -> dict[str, Any]:
    """``--kwargs`` JSON (``'{"num_classes": 10}'``) -> a dict of keyword arguments.

    Example:
        >>> parse_kwargs('{"in_features": 4, "out_features": 2}')
        {'in_features': 4, 'out_features': 2}
    """
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ArgumentError(
            f"{option} must be a JSON object such as '{{\"num_classes\": 10}}', got {text!r} "
            f"({e.msg} at position {e.pos})"
        ) from None
    if not isinstance(value, dict):
        raise ArgumentError(
            f"{option} must be a JSON object such as '{{\"num_classes\": 10}}', got {text!r}"
        )
    return value


def no_download_kwargs(builder: Callable[..., Any]) -> dict[str, Any]:
    """``None`` for every weights argument of a torchvision builder (``weights``,
    ``weights_backbone``, ...), so that building it downloads nothing.

    Example:
        >>> import torchvision
        >>> no_download_kwargs(torchvision.models.get_model_builder("fasterrcnn_resnet50_fpn"))
        {'weights': None, 'weights_backbone': None}
    """
    params = inspect.signature(builder).parameters
    return {name: None for name in params if name == "weights" or name.startswith("weights_")}


def _required(fn: Callable[..., Any], kwargs: dict[str, Any]) -> list[str] | None:
    """The parameters ``fn(**kwargs)`` lacks (None when the signature is unknown)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    try:
        sig.bind(**kwargs)
    except TypeError:
        return [
            name
            for name, p in sig.parameters.items()
            if p.default is p.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.POSITIONAL_ONLY)
            and name not in kwargs
        ]
    return []


def _torchvision_factory(name: str, kwargs: dict[str, Any]) -> Callable[[], Any]:
    import torchvision

    available = torchvision.models.list_models()
    if name not in available:
        import difflib

        close = difflib.get_close_matches(name, available, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ArgumentError(
            f"torchvision has no model {name!r}{hint}; torchvision.models.list_models() lists them"
        )
    builder = torchvision.models.get_model_builder(name)
    full = {**no_download_kwargs(builder), **kwargs}
    return lambda: builder(**full)


def load_model_spec(
    spec: str,
    *,
    meta: bool = False,
    kwargs: dict[str, Any] | None = None,
    option: str = "SPEC",
    files: bool = True,
) -> nn.Module:
    """Build the model a CLI ``SPEC`` names.

    ``torchvision:resnet18`` builds the torchvision model with ``weights=None``
    (and every other ``weights_*`` argument ``None``); ``package.module:callable``
    imports and calls it with ``kwargs`` (none by default). With ``meta=True``
    the model is built on the meta device (no memory, no initialization).

    Args:
        spec: the spec text.
        meta: build on the meta device.
        kwargs: keyword arguments for the builder (``--kwargs``).
        option: how messages name the argument (``"--into"``).
        files: whether the option also accepts a checkpoint file (for messages).

    Raises:
        ArgumentError: the spec is malformed, names nothing, is a file where a
            model spec is needed, or its callable needs arguments.
        SurgeryError: the callable raised.

    Example:
        >>> load_model_spec("torch.nn:Linear", kwargs={"in_features": 4, "out_features": 2})
        Linear(in_features=4, out_features=2, bias=True)
    """
    kwargs = dict(kwargs or {})
    if ":" not in spec:
        if os.path.exists(spec) and not files:
            raise ArgumentError(
                f"{option} takes a model spec ({SPEC_FORMS}), not a checkpoint: {spec!r} is a "
                f"file. Name the model the checkpoint is for, e.g. {option} torchvision:resnet18"
            )
        also = " nor an existing checkpoint file" if files else ""
        raise ArgumentError(f"{option} {spec!r} is neither {SPEC_FORMS}{also}")
    prefix, _, name = spec.partition(":")
    factory: Callable[[], Any]
    if prefix == "torchvision":
        factory = _torchvision_factory(name, kwargs)
    else:
        try:
            module = importlib.import_module(prefix)
        except ImportError as exc:
            raise ArgumentError(f"cannot import {prefix!r} from {option} {spec!r}: {exc}") from None
        obj: Any = module
        for part in name.split("."):
            if not hasattr(obj, part):
                raise ArgumentError(f"{prefix!r} has no attribute {name!r} ({option} {spec!r})")
            obj = getattr(obj, part)
        if not callable(obj):
            raise ArgumentError(f"{option} {spec!r} is not callable")
        missing = _required(obj, kwargs)
        if missing:
            example = json.dumps({m: 1 for m in missing})
            raise ArgumentError(
                f"{spec} needs arguments ({', '.join(missing)}): pass them as JSON with "
                f"--kwargs '{example}', or name a zero-argument factory "
                f"(package.module:callable that builds the model)"
            )
        target = obj

        def factory() -> Any:
            return target(**kwargs)

    def build() -> Any:
        if meta:
            with torch.device("meta"):
                return factory()
        return factory()

    model = user_call(build, what=f"building {spec}")
    if not isinstance(model, nn.Module):
        raise ArgumentError(f"{spec!r} returned {type(model).__name__}, not an nn.Module")
    return model


def checkpoint_infos(
    spec: str, key: str | None = None, kwargs: dict[str, Any] | None = None
) -> tuple[str, dict[str, TensorInfo]]:
    """(description, key -> TensorInfo) of a checkpoint path or a model spec (built on meta).

    Example:
        >>> title, infos = checkpoint_infos("torch.nn:Linear", kwargs={"in_features": 4, "out_features": 2})
        >>> title, infos["weight"].shape
        ('torch.nn:Linear', (2, 4))
    """
    if os.path.exists(spec):
        with open_source(spec, key=key) as src:
            desc = src.description + (f" [{src.unwrapped!r}]" if src.unwrapped else "")
            keys = src.keys()
            return desc, {k: src.info(k) for k in keys}
    model = load_model_spec(spec, meta=True, kwargs=kwargs)
    return spec, {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
