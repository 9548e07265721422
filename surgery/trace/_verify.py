"""``summary`` and ``verify``: torchinfo statistics computed on the meta device.

``summary`` is torchinfo's own table, run on a meta copy (no memory, no
compute, the caller's model never moves). ``verify`` checks expectations fast:

* parameter counts come straight from ``model.parameters()`` (each tensor
  once, so shared and tied parameters count once);
* the output shape comes from one forward of a meta copy in eval mode in
  which **repeated blocks are run once**: modules that are structurally
  identical (same class, same parameter and buffer shapes and dtypes, same
  hyperparameters, recursively) and receive an input of the same shape and
  dtype reuse the output shape of the first one instead of running (their
  ``forward`` is patched on the meta copy only);
* the returned ``ModelStatistics`` carries those totals at once; its per-layer
  table (``summary_list``, mult-adds, sizes, ``str()``) is computed by
  torchinfo on the meta copy the first time it is asked for.
"""

from __future__ import annotations

import copy
import functools
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:  # torchinfo is imported at first use: `import surgery` stays light
    from torchinfo import ModelStatistics

from .._errors import ArgumentError, SurgeryError, VerificationError
from ..paths._resolve import check_model
from ._meta import eval_mode, meta_copy, normalize_input_size

__all__ = ["summary", "verify"]

_LAZY = frozenset(
    {"summary_list", "formatting", "total_mult_adds", "total_output_bytes", "total_param_bytes"}
)
_SIMPLE = (int, float, str, bool, type(None), torch.dtype)


# ----------------------------------------------------------------------------- summary


def _to_meta(data: Any) -> Any:
    if isinstance(data, torch.Tensor):
        return torch.empty_like(data, device="meta")
    if isinstance(data, dict):
        return {k: _to_meta(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(_to_meta(v) for v in data) if not hasattr(data, "_fields") else data
    return data


def _devices(model: nn.Module) -> set[torch.device]:
    return {t.device for t in (*model.parameters(), *model.buffers())}


def _run_torchinfo(model: nn.Module, input_size: Any, kwargs: dict[str, Any]) -> ModelStatistics:
    from torchinfo import summary as _torchinfo_summary

    try:
        with eval_mode(model):  # torchinfo resets every module to the root's mode; we restore each
            return _torchinfo_summary(model, input_size, **kwargs)
    except Exception as e:
        cause = e.__cause__ or e
        raise SurgeryError(
            f"torchinfo could not run {type(model).__name__} with input_size={input_size!r} "
            f"on {kwargs.get('device')}: {type(cause).__name__}: {cause}"
        ) from e


def summary(model: nn.Module, input_size: Any = None, **torchinfo_kwargs: Any) -> ModelStatistics:
    """torchinfo's summary of ``model``, computed on a meta copy by default.

    The caller's model is never moved, run or changed (its train/eval modes
    included). Every keyword goes to ``torchinfo.summary`` (``depth``,
    ``col_names``, ``dtypes``, ``input_data``...); ``verbose`` defaults to 0
    (nothing printed: print the result). ``device="cpu"`` (or ``"cuda"``)
    asks for a real run: on the model itself when it already lives there,
    otherwise on a deep copy.

    Args:
        model: any ``nn.Module``.
        input_size: the input shape with the batch dimension, such as
            ``(1, 3, 224, 224)``, or a list of shapes for several inputs.
        **torchinfo_kwargs: passed to ``torchinfo.summary``.

    Returns:
        torchinfo's ``ModelStatistics``.

    Raises:
        SurgeryError: the forward fails (the message says why).

    Example:
        >>> import torchvision, surgery
        >>> m = torchvision.models.resnet18(weights=None)
        >>> stats = surgery.summary(m, (1, 3, 224, 224))
        >>> stats.total_params, stats.summary_list[-1].output_size
        (11689512, [1, 1000])
        >>> m.conv1.weight.device.type
        'cpu'
    """
    check_model(model, "summary")
    kwargs = dict(torchinfo_kwargs)
    kwargs.setdefault("verbose", 0)
    device = kwargs.pop("device", None)
    target = torch.device(device) if device is not None else torch.device("meta")
    if target.type == "meta":
        if kwargs.get("input_data") is not None:
            kwargs["input_data"] = _to_meta(kwargs["input_data"])
        return _run_torchinfo(meta_copy(model), input_size, {**kwargs, "device": target})
    devices = _devices(model)
    if any(d.type == "meta" for d in devices):
        raise ArgumentError(
            f"{type(model).__name__} lives on the meta device (no data): it cannot run on "
            f"{target}; drop device= to summarize it on the meta device"
        )
    if devices and devices != {target}:
        model = copy.deepcopy(model)  # the caller's model never moves
    return _run_torchinfo(model, input_size, {**kwargs, "device": target})


# ----------------------------------------------------------------------------- shape cache


_SKIP = object()
_MODULE_KEYS = frozenset(nn.Module().__dict__)  # nn.Module's own bookkeeping attributes


def _simple(value: Any) -> Any:
    if isinstance(value, _SIMPLE):
        return value
    if isinstance(value, (tuple, list)) and all(isinstance(v, _SIMPLE) for v in value):
        return tuple(value)
    return _SKIP


class _MetaClone:
    """A structural copy of a model on the meta device, in eval mode, that skips repeats.

    Signatures first: every module of the original gets a structural id;
    equal ids mean same class, same parameter/buffer names, shapes and dtypes,
    same simple attributes (the hyperparameters: ``stride``, ``in_features``...),
    recursively, so equal inputs give equal output shapes. A module with hooks
    is unique.

    Then the copy, faster than ``copy.deepcopy``: each module object is copied
    once (shared modules stay shared) with its own parameter, buffer, submodule
    and hook dicts; parameters and buffers get meta twins (tied tensors stay
    tied); other attributes are shared with the original, which is why
    :func:`verify` re-checks any failure with a plain
    :func:`surgery.trace._meta.meta_copy`. A module identical to one already copied
    becomes a :class:`_Repeat`: it answers from the shape cache and is only
    copied if its input has a shape not seen before.
    """

    def __init__(self, model: nn.Module) -> None:
        self.twins: dict[int, Any] = {}
        self.done: dict[int, nn.Module] = {}
        self.sig: dict[int, int] = {}
        self.interned: dict[tuple[Any, ...], int] = {}
        self.cache: dict[tuple[Any, ...], tuple[torch.Size, torch.dtype]] = {}
        self._sign(model)
        counts: dict[int, int] = {}
        for sid in self.sig.values():
            counts[sid] = counts.get(sid, 0) + 1
        self.repeated = {sid for sid, n in counts.items() if n > 1}
        self.copied: set[int] = set()
        self.root_id = id(model)
        self.root = self.copy(model)

    def _sign(self, m: nn.Module) -> int:
        found = self.sig.get(id(m))
        if found is not None:
            return found
        attrs = []
        for k, v in m.__dict__.items():
            if k not in _MODULE_KEYS and k != "forward":
                value = _simple(v)
                if value is not _SKIP:
                    attrs.append((k, value))
        hooked = m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__
        key = (
            type(m),
            id(m) if hooked else None,
            tuple((k, None if p is None else (p.shape, p.dtype)) for k, p in m._parameters.items()),
            tuple((k, None if b is None else (b.shape, b.dtype)) for k, b in m._buffers.items()),
            tuple(attrs),
            tuple((k, None if c is None else self._sign(c)) for k, c in m._modules.items()),
        )
        sid = self.sig[id(m)] = self.interned.setdefault(key, len(self.interned))
        return sid

    def _twin(self, t: Any, param: bool) -> Any:
        if t is None:
            return None
        found = self.twins.get(id(t))
        if found is None:
            found = torch.empty_like(t, device="meta")
            if param:
                found = nn.Parameter(found, requires_grad=t.requires_grad)
            self.twins[id(t)] = found
        return found

    def copy(self, m: nn.Module, *, whole: bool = False) -> nn.Module:
        """The meta copy of ``m`` (a :class:`_Repeat` for a repeat, unless ``whole``)."""
        found = self.done.get(id(m))
        if found is not None and not (whole and isinstance(found, _Repeat)):
            return found
        sid = self.sig[id(m)]
        if not whole and sid in self.copied and id(m) != self.root_id:
            rep = _Repeat(self, m, sid)
            self.done[id(m)] = rep
            return rep
        self.copied.add(sid)
        new = object.__new__(type(m))
        self.done[id(m)] = new
        d = dict(m.__dict__)
        for k in _MODULE_KEYS:
            v = d.get(k)
            if isinstance(v, (dict, set)):
                d[k] = v.copy()  # hook dicts, _non_persistent_buffers_set
        twin = self._twin
        d["_parameters"] = {k: twin(p, True) for k, p in m._parameters.items()}
        d["_buffers"] = {k: twin(b, False) for k, b in m._buffers.items()}
        d["_modules"] = {
            k: (self.copy(c) if c is not None else None) for k, c in m._modules.items()
        }
        d["training"] = False
        object.__setattr__(new, "__dict__", d)
        # shape shortcuts, on the copy only: norms keep shapes, repeats fill the cache
        if isinstance(new, _norm_types()) and not new._forward_hooks and not new._forward_pre_hooks:
            d["forward"] = _norm_forward(new, new.forward)
        elif sid in self.repeated and id(m) != self.root_id:
            d["forward"] = _cached_forward(new.forward, sid, self.cache)
        return new


class _Repeat(nn.Module):
    """Stands for a module identical to one already copied: answers from the shape cache."""

    def __init__(self, clone: _MetaClone, original: nn.Module, sid: int) -> None:
        super().__init__()
        self.__dict__["_clone"] = clone
        self.__dict__["_original"] = original
        self.__dict__["_sid"] = sid
        self.__dict__["_real"] = None

    def _materialize(self) -> nn.Module:
        real = self.__dict__["_real"]
        if real is None:
            real = self.__dict__["_clone"].copy(self.__dict__["_original"], whole=True)
            self.__dict__["_real"] = real
        return real

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor):
            x = args[0]
            hit = self.__dict__["_clone"].cache.get((self.__dict__["_sid"], x.shape, x.dtype))
            if hit is not None:
                return torch.empty(hit[0], dtype=hit[1], device="meta")
        return self._materialize()(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # the parent reads an attribute: be the real one
        return getattr(self._materialize(), name)


_NORMS: tuple[type, ...] = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def _norm_types() -> tuple[type, ...]:
    """The normalization classes, torchvision's FrozenBatchNorm2d (detection backbones,
    surgery.freeze) included once torchvision has been imported: before that, no model
    can hold one, and importing it here would cost seconds at ``import surgery``."""
    ops = sys.modules.get("torchvision.ops")
    frozen = getattr(ops, "FrozenBatchNorm2d", None)
    return (*_NORMS, frozen) if isinstance(frozen, type) else _NORMS


def _norm_forward(m: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
    """The shape of a normalization layer in eval mode, without the slow meta decomposition.

    Normalization keeps the input shape; the shape checks that a real run
    makes (channels, normalized trailing dims) are made here too, and a
    mismatch runs the real meta kernel, which raises the real error.
    """

    def run(*args: Any, **kwargs: Any) -> Any:
        if len(args) != 1 or kwargs or not isinstance(args[0], torch.Tensor):
            return forward(*args, **kwargs)
        x = args[0]
        if isinstance(m, nn.LayerNorm):
            n = len(m.normalized_shape)
            ok = x.dim() >= n and tuple(x.shape[x.dim() - n :]) == tuple(m.normalized_shape)
        else:
            check = getattr(m, "_check_input_dim", None)
            if check is not None:
                check(x)
            channels: Any
            if isinstance(m, nn.GroupNorm):
                channels = m.num_channels
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                channels = m.num_features
            else:
                channels = m.weight.shape[0]  # type: ignore[union-attr,index,unused-ignore]
            ok = x.dim() >= 2 and x.shape[1] == channels
        if not ok:
            return forward(x)
        return torch.empty_like(x)

    return run


def _cached_forward(
    forward: Callable[..., Any],
    sid: int,
    cache: dict[tuple[Any, ...], tuple[torch.Size, torch.dtype]],
) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        if len(args) != 1 or kwargs or not isinstance(args[0], torch.Tensor):
            return forward(*args, **kwargs)
        x = args[0]
        key = (sid, x.shape, x.dtype)
        hit = cache.get(key)
        if hit is not None:
            return torch.empty(hit[0], dtype=hit[1], device="meta")
        out = forward(x)
        if isinstance(out, torch.Tensor):
            cache[key] = (out.shape, out.dtype)
        return out

    return run


def _shape_of(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, dict):
        return {k: _shape_of(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(_shape_of(v) for v in value)
    return value


def _fast_output_shape(clone: _MetaClone, inputs: list[torch.Tensor]) -> Any:
    """The output shape of the meta copy, with its shape shortcuts."""
    with torch.no_grad():
        return _shape_of(clone.root(*inputs))


def _plain_output_shape(model: nn.Module, inputs: list[torch.Tensor]) -> Any:
    """The output shape from an ordinary meta copy and forward (the reference path)."""
    plain = meta_copy(model)
    with eval_mode(plain), torch.no_grad():
        return _shape_of(plain(*inputs))


# ----------------------------------------------------------------------------- statistics


@functools.cache
def verified_statistics_type() -> type[Any]:
    """:class:`VerifiedStatistics`, defined at first use (it subclasses torchinfo's class)."""
    from torchinfo import ModelStatistics

    class VerifiedStatistics(ModelStatistics):
        """torchinfo's ``ModelStatistics`` for :func:`verify`: totals now, the table on demand.

        ``total_params``, ``trainable_params``, ``input_size``, ``total_input`` and
        ``output_size`` are set by ``verify`` (shared parameters counted once).
        ``summary_list``, ``formatting``, ``total_mult_adds``, ``total_output_bytes``
        and ``total_param_bytes`` (and so ``str()``) are computed by
        :func:`summary` (torchinfo on a meta copy of the model, as it is then) the
        first time one of them is read; the totals stay verify's.
        """

        def __init__(
            self,
            model: nn.Module,
            input_size: list[tuple[int, ...]],
            dtypes: list[torch.dtype],
            total_params: int,
            trainable_params: int,
            output_size: Any,
        ) -> None:  # no super().__init__: it needs the table, which is computed lazily
            self._model = model
            self._dtypes = dtypes
            self.input_size = input_size
            self.total_input = sum(
                torch.Size(s).numel() * torch.empty((), dtype=d).element_size()
                for s, d in zip(input_size, dtypes)
            )
            self.total_params = total_params
            self.trainable_params = trainable_params
            self.output_size = output_size

        def __getattr__(self, name: str) -> Any:
            if name in _LAZY:
                stats = summary(self._model, list(self.input_size), dtypes=self._dtypes)
                for key in _LAZY:
                    self.__dict__[key] = getattr(stats, key)
                return self.__dict__[name]
            raise AttributeError(name)

    return VerifiedStatistics


def __getattr__(name: str) -> Any:  # `from ._verify import VerifiedStatistics` still works
    if name == "VerifiedStatistics":
        return verified_statistics_type()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------- verify


def _count(model: nn.Module) -> tuple[int, int]:
    total = trainable = 0
    for p in model.parameters():  # each tensor once: shared and tied parameters count once
        if isinstance(p, nn.parameter.UninitializedParameter):
            raise ArgumentError(
                f"{type(model).__name__} has uninitialized (lazy) parameters: run one forward "
                f"with real data first, then verify"
            )
        n = p.numel()
        total += n
        if p.requires_grad:
            trainable += n
    return total, trainable


def _check_count(value: object, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ArgumentError(f"{name} must be an int >= 0 or None, got {value!r}")
    return value


def _normalize_shape(value: Any) -> Any:
    if isinstance(value, torch.Size):
        return tuple(value)
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return tuple(value)
        return tuple(_normalize_shape(v) for v in value)
    if isinstance(value, dict):
        return {k: _normalize_shape(v) for k, v in value.items()}
    raise ArgumentError(
        f"output_shape must be a shape such as (1, 1000) (or a tuple/dict of shapes for "
        f"several outputs), got {value!r}"
    )


def _fmt(value: Any) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    return repr(value)


def verify(
    model: nn.Module,
    input_size: Any,
    *,
    output_shape: Any = None,
    total_params: int | None = None,
    trainable_params: int | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
) -> ModelStatistics:
    """Check the output shape and parameter counts of ``model``; raise listing every failure.

    The forward runs on a meta copy in eval mode (the caller's model is never
    moved, run or changed), with repeated blocks computed once (see the module
    docstring). Shared or tied parameters count once.

    Args:
        model: any ``nn.Module``.
        input_size: the input shape with the batch dimension, or a list of shapes.
        output_shape: the expected output shape (a tuple/dict of shapes for
            models with several outputs); ``None`` skips the check.
        total_params: the expected number of parameters; ``None`` skips it.
        trainable_params: the expected number with ``requires_grad``; ``None`` skips it.
        dtypes: input dtypes, one per input (default float32).

    Returns:
        torchinfo's ``ModelStatistics`` (a :class:`VerifiedStatistics`): the
        totals and ``output_size`` at once, the per-layer table on demand.

    Raises:
        VerificationError: one or more expectations do not hold (or the forward
            fails); the message lists each, expected vs actual.
        ArgumentError: an expectation or ``input_size`` is malformed.

    Example:
        >>> import torchvision, surgery
        >>> m = torchvision.models.resnet18(weights=None)
        >>> stats = surgery.verify(m, (1, 3, 224, 224), output_shape=(1, 1000),
        ...                        total_params=11_689_512)
        >>> stats.total_params, stats.output_size
        (11689512, (1, 1000))
        >>> surgery.verify(m, (1, 3, 224, 224), output_shape=(1, 10), trainable_params=0)
        Traceback (most recent call last):
        ...
        surgery._errors.VerificationError: verify(ResNet, input_size=(1, 3, 224, 224)): 2 failed expectations
          output_shape: expected (1, 10), got (1, 1000)
          trainable_params: expected 0, got 11,689,512 (difference +11,689,512)
    """
    check_model(model, "verify")
    sizes = normalize_input_size(input_size)
    expected_shape = _normalize_shape(output_shape) if output_shape is not None else None
    want_total = _check_count(total_params, "total_params")
    want_trainable = _check_count(trainable_params, "trainable_params")
    types = list(dtypes) if dtypes is not None else [torch.float32] * len(sizes)
    if len(types) != len(sizes) or not all(isinstance(d, torch.dtype) for d in types):
        raise ArgumentError(f"dtypes must hold one torch.dtype per input, got {dtypes!r}")

    total, trainable = _count(model)
    clone = _MetaClone(model)
    inputs = [torch.empty(s, dtype=d, device="meta") for s, d in zip(sizes, types)]
    failures: list[str] = []
    shape: Any = None
    try:
        shape = _fast_output_shape(clone, inputs)
    except Exception:
        try:  # the shortcuts never decide a failure: the plain meta forward does
            shape = _plain_output_shape(model, inputs)
        except Exception as e:
            failures.append(f"forward: fails on the meta device: {type(e).__name__}: {e}")
    if expected_shape is not None and not failures and shape != expected_shape:
        failures.append(f"output_shape: expected {_fmt(expected_shape)}, got {_fmt(shape)}")
    for name, want, got in (
        ("total_params", want_total, total),
        ("trainable_params", want_trainable, trainable),
    ):
        if want is not None and want != got:
            failures.append(f"{name}: expected {want:,}, got {got:,} (difference {got - want:+,})")
    if failures:
        shown = sizes[0] if len(sizes) == 1 else sizes
        noun = "failed expectation" if len(failures) == 1 else "failed expectations"
        raise VerificationError(
            f"verify({type(model).__name__}, input_size={shown}): {len(failures)} {noun}\n"
            + "\n".join(f"  {f}" for f in failures)
        )
    return verified_statistics_type()(model, sizes, types, total, trainable, shape)
