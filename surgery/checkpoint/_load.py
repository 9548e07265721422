"""``surgery.load_partial``: partial, renamed, validated, all-or-nothing loading.

Three phases, as everywhere in ``surgery``:

1. **parse**: open the source (:mod:`surgery.checkpoint._sources`), compile ``include``,
   ``exclude`` and ``rename`` (:mod:`surgery.checkpoint._rename`), resolve ``at``.
2. **plan** (:func:`_plan`): match checkpoint keys to model tensors using only
   shapes and dtypes from the checkpoint's header; check collisions, shapes,
   casts (reading only the tensors that need a value check), tied parameters,
   strictness. Every problem of a kind is listed in one error. The plan is the
   report; ``dry_run=True`` returns it.
3. **apply** (:func:`_apply`): write the planned tensors. Transactional by
   default: new values are staged in fresh tensors (nothing in the model
   changes while reading), then committed by swapping storage into the same
   ``Parameter`` objects; tensors whose storage is shared with anything else
   are copied in place after a snapshot. ``transactional=False`` copies in
   place as it reads (no extra memory).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._errors import ArgumentError, LoadError, SurgeryError
from .._hints import Hint
from ..paths._resolve import resolve
from ._materialize import MetaInit, install, is_dtensor, plan_init, read_for, run_init
from ._rename import KeyFilter, RenameRules, RenameSpec
from ._sources import TensorInfo, TensorSource, open_source

__all__ = ["CASTING", "LoadReport", "StateDictView", "load_partial"]

#: numpy's casting names, from strictest to most permissive.
CASTING = ("no", "equiv", "safe", "same_kind", "unsafe")
_MAX_LISTED = 50
_MAX_LOADED_SHOWN = 20


# ---------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _quoted(keys: Sequence[str], limit: int | None = None) -> str:
    ordered = sorted(keys)
    if limit is not None and len(ordered) > limit:
        return ", ".join(map(repr, ordered[:limit])) + f", ... and {len(ordered) - limit} more"
    return ", ".join(map(repr, ordered))


@dataclass
class LoadReport:
    """What :func:`load_partial` loaded (or, with ``dry_run=True``, would load).

    Keys of the model are full paths in ``into`` (``at`` included); checkpoint
    keys are as stored in the checkpoint, before renaming.

    Attributes:
        loaded: model keys that received a checkpoint value (model order; both
            keys of tied parameters).
        missing: model keys (under ``at``) that received nothing, mismatched
            ones excepted.
        unexpected: selected checkpoint keys that have no target in the model.
        renamed: model key -> checkpoint key, for loaded keys whose names differ.
        mismatched: model key -> (checkpoint shape, model shape), for keys skipped
            with ``on_mismatch="skip"``.
        cast: model key -> (checkpoint dtype, model dtype), for every cast.
        unused_rules: rename rules (the old prefix or the regex) that renamed no
            selected key.
        source: the source's description (path, ``"<mapping>"``, ...).
        unwrapped: the wrapper entry the state dict was taken from, if any.
        dry_run: True when nothing was written.
        initialized: model keys that were on the meta device, received no value
            and were materialized on CPU by their module's initializer
            (``init_missing=True``); they are in ``missing`` too.

    Example:
        >>> import torchvision, surgery
        >>> model = torchvision.models.resnet18(weights=None)
        >>> ddp = {"module." + k: v for k, v in model.state_dict().items()}
        >>> report = surgery.load_partial(ddp, into=model, rename={"module.": ""},
        ...                               include="module.layer4", dry_run=True)
        >>> len(report.loaded), len(report.missing), report.dry_run
        (30, 92, True)
        >>> report.renamed["layer4.0.conv1.weight"]
        'module.layer4.0.conv1.weight'
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    cast: dict[str, tuple[torch.dtype, torch.dtype]] = field(default_factory=dict)
    unused_rules: list[str] = field(default_factory=list)
    source: str = ""
    unwrapped: str | None = None
    dry_run: bool = False
    initialized: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (shapes as lists, dtypes as names)."""
        return {
            "loaded": list(self.loaded),
            "missing": list(self.missing),
            "unexpected": list(self.unexpected),
            "renamed": dict(self.renamed),
            "mismatched": {k: [list(a), list(b)] for k, (a, b) in self.mismatched.items()},
            "cast": {k: [_dtype_name(a), _dtype_name(b)] for k, (a, b) in self.cast.items()},
            "unused_rules": list(self.unused_rules),
            "source": self.source,
            "unwrapped": self.unwrapped,
            "dry_run": self.dry_run,
            "initialized": list(self.initialized),
        }

    def to_json(self, **kwargs: Any) -> str:
        """``json.dumps(self.to_dict(), **kwargs)``."""
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self) -> str:
        verb = "would load" if self.dry_run else "loaded"
        where = f" from {self.source}" if self.source else ""
        if self.unwrapped:
            where += f" [{self.unwrapped!r}]"
        lines = [
            f"LoadReport{where}: {verb} {len(self.loaded)}, missing {len(self.missing)}, "
            f"unexpected {len(self.unexpected)}, mismatched {len(self.mismatched)}, "
            f"cast {len(self.cast)}, renamed {len(self.renamed)}"
        ]
        if self.loaded:
            lines.append(
                f"  {verb} ({len(self.loaded)}): {_quoted(self.loaded, _MAX_LOADED_SHOWN)}"
            )
        if self.missing:
            lines.append(f"  missing ({len(self.missing)}): {_quoted(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected ({len(self.unexpected)}): {_quoted(self.unexpected)}")
        if self.mismatched:
            lines.append(f"  mismatched, skipped ({len(self.mismatched)}):")
            for k in sorted(self.mismatched):
                a, b = self.mismatched[k]
                lines.append(f"    {k!r}: checkpoint {tuple(a)} vs model {tuple(b)}")
        if self.cast:
            lines.append(f"  cast ({len(self.cast)}):")
            for k in sorted(self.cast):
                a2, b2 = self.cast[k]
                lines.append(f"    {k!r}: {_dtype_name(a2)} -> {_dtype_name(b2)}")
        if self.renamed:
            lines.append(f"  renamed ({len(self.renamed)}, model <- checkpoint):")
            for k in sorted(self.renamed)[:_MAX_LOADED_SHOWN]:
                lines.append(f"    {k!r} <- {self.renamed[k]!r}")
            if len(self.renamed) > _MAX_LOADED_SHOWN:
                lines.append(f"    ... and {len(self.renamed) - _MAX_LOADED_SHOWN} more")
        if self.unused_rules:
            lines.append(f"  unused rename rules: {', '.join(map(repr, self.unused_rules))}")
        if self.initialized:
            lines.append(
                f"  initialized on CPU by their modules ({len(self.initialized)}): "
                f"{_quoted(self.initialized)}"
            )
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# the lazy state dict (no ``into``)
# ---------------------------------------------------------------------------


class StateDictView(Mapping[str, torch.Tensor]):
    """A read-only mapping of renamed keys to tensors, read from the source on access.

    Attributes:
        source: the underlying :class:`~surgery.checkpoint._sources.TensorSource`.
        key_map: new key -> checkpoint key.
        unused_rules: rename rules that renamed no selected key.
    """

    def __init__(self, source: TensorSource, key_map: dict[str, str], unused_rules: list[str]):
        self.source = source
        self.key_map = key_map
        self.unused_rules = unused_rules

    def __getitem__(self, key: str) -> torch.Tensor:
        try:
            ckpt_key = self.key_map[key]
        except KeyError:
            raise KeyError(key) from None
        return self.source.read(ckpt_key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.key_map)

    def __len__(self) -> int:
        return len(self.key_map)

    def info(self, key: str) -> TensorInfo:
        """Shape and dtype of ``key`` without reading it."""
        return self.source.info(self.key_map[key])

    def __repr__(self) -> str:
        return f"StateDictView({self.source.description!r}, {len(self)} keys)"


# ---------------------------------------------------------------------------
# casting rules
# ---------------------------------------------------------------------------


def _kind(dtype: torch.dtype) -> int:
    if dtype == torch.bool:
        return 0
    if dtype.is_complex:
        return 3
    if dtype.is_floating_point:
        return 2
    return 1


def _safe_cast(src: torch.dtype, dst: torch.dtype) -> bool:
    """numpy-style "safe": every value of ``src`` is representable in ``dst``."""
    if src == dst or src == torch.bool:
        return True
    ks, kd = _kind(src), _kind(dst)
    if ks > kd or kd == 0:
        return False
    if ks == 1 and kd == 1:
        si, di = torch.iinfo(src), torch.iinfo(dst)
        return di.min <= si.min and di.max >= si.max
    if ks == 1:  # int -> float/complex: the mantissa must hold every integer
        bits = torch.iinfo(src).bits
        real = dst if kd == 2 else (torch.float32 if dst == torch.complex64 else torch.float64)
        mant = {torch.float16: 11, torch.bfloat16: 8, torch.float32: 24, torch.float64: 53}
        return mant.get(real, 0) >= bits or (bits == 64 and real == torch.float64)
    if ks == 2 and kd == 3:
        real = torch.float32 if dst == torch.complex64 else torch.float64
        return _safe_cast(src, real)
    if ks == 3:
        return src == torch.complex64 and dst == torch.complex128
    fs, fd = torch.finfo(src), torch.finfo(dst)
    return fd.max >= fs.max and fd.eps <= fs.eps and fd.tiny <= fs.tiny


def _cast_problem(src: torch.dtype, dst: torch.dtype, casting: str) -> str | None:
    """Why ``src -> dst`` is refused under ``casting`` (dtype level), or None."""
    if src == dst or casting == "unsafe":
        return None
    if casting in ("no", "equiv"):
        return f"casting={casting!r} allows no dtype change"
    if casting == "safe":
        return None if _safe_cast(src, dst) else "not a safe cast (values may change)"
    if _kind(src) > _kind(dst):
        names = {0: "bool", 1: "integer", 2: "float", 3: "complex"}
        return f"a {names[_kind(src)]} would become {names[_kind(dst)]}"
    return None


def _value_problem(value: torch.Tensor, dst: torch.dtype) -> str | None:
    """For same_kind casts that may lose range: do finite values overflow ``dst``?"""
    if _kind(dst) == 1:
        if value.numel() == 0 or value.dtype == torch.bool:
            return None
        info = torch.iinfo(dst)
        lo, hi = value.min().item(), value.max().item()
        if lo < info.min or hi > info.max:
            return f"values in [{lo}, {hi}] do not fit {_dtype_name(dst)}"
        return None
    if _kind(dst) >= 2 and value.numel():
        converted = value.to(dst)
        src_finite = (
            torch.isfinite(value) if value.is_floating_point() or value.is_complex() else None
        )
        bad = ~torch.isfinite(converted)
        if src_finite is not None:
            bad &= src_finite
        n = int(bad.sum())
        if n:
            worst = value[bad].abs().max().item() if n else 0
            return f"{n} finite value(s) (up to {worst:g}) overflow {_dtype_name(dst)} to inf/nan"
    return None


# ---------------------------------------------------------------------------
# the plan
# ---------------------------------------------------------------------------


@dataclass
class _Item:
    """One tensor of the model to write (tied keys share one item)."""

    model_keys: list[str]  # full keys in into; the first is the one the value came from
    ckpt_key: str
    target: torch.Tensor  # the model's Parameter or buffer (keep_vars=True)
    info: TensorInfo  # the checkpoint tensor's shape and dtype
    owner: nn.Module  # the module that registers the tensor under `name`
    name: str
    # for a target on meta: every (module, name) that registers it (tied keys too)
    owners: list[tuple[nn.Module, str]] = field(default_factory=list)


@dataclass
class _Plan:
    items: list[_Item]
    report: LoadReport
    inits: list[MetaInit] = field(default_factory=list)  # init_missing=True
    copy_meta: bool = False  # copy values assigned to meta targets (source is a live module)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _owner(
    root: nn.Module, rel_key: str, modules: Mapping[str, nn.Module] | None = None
) -> tuple[nn.Module, str]:
    mod_path, _, name = rel_key.rpartition(".")
    if modules is not None and mod_path in modules:  # named_modules(), built once per plan
        return modules[mod_path], name
    return (root.get_submodule(mod_path) if mod_path else root), name


def _listing(title: str, entries: Sequence[str]) -> str:
    shown = list(entries[:_MAX_LISTED])
    more = f"\n    ... and {len(entries) - len(shown)} more" if len(entries) > len(shown) else ""
    return title + "".join(f"\n    {e}" for e in shown) + more


def _zero_hint(
    targets: list[str], model_keys: set[str], renamed: bool = False
) -> tuple[str, tuple[Hint, ...]]:
    """A rename/at hint when no checkpoint key matches a model key: (text, hints).

    ``targets`` are the keys after renaming (``renamed``: the rules changed some).
    """
    if not targets or not model_keys:
        return "", ()
    if renamed:
        hint, hints = _zero_hint(targets, model_keys)
        adjust = Hint("rename")
        return (f"after renaming, {hint} (adjust {adjust})", (*hints, adjust)) if hint else ("", ())
    firsts = {k.split(".", 1)[0] for k in targets}
    if len(firsts) == 1 and all("." in k for k in targets):
        p = next(iter(firsts))
        n = sum(k.split(".", 1)[1] in model_keys for k in targets)
        if n:
            fix = Hint("rename", {f"{p}.": ""})
            return f"every checkpoint key starts with '{p}.': {fix} (then {n} keys match)", (fix,)
    # the model's keys hold the checkpoint's under a prefix: at= (or add a prefix)
    best: dict[str, int] = {}
    for k in targets[:200]:
        for mk in model_keys:
            if mk.endswith("." + k):
                q = mk[: -len(k) - 1]
                best[q] = best.get(q, 0) + 1
    if best:
        q, n = max(best.items(), key=lambda kv: kv[1])
        at, add = Hint("at", q), Hint("rename", {"": f"{q}."})
        return f"{n} checkpoint keys match model keys under '{q}': {at} (or {add})", (at, add)
    # part of the checkpoint has an extra leading segment
    counts: dict[str, int] = {}
    for k in targets:
        if "." in k:
            p, rest = k.split(".", 1)
            if rest in model_keys:
                counts[p] = counts.get(p, 0) + 1
    if counts:
        p, n = max(counts.items(), key=lambda kv: kv[1])
        fix = Hint("rename", {f"{p}.": ""})
        return f"{n} checkpoint keys starting with '{p}.' match once renamed: {fix}", (fix,)
    return "", ()


def _select(
    source: TensorSource, keyfilter: KeyFilter, rules: RenameRules
) -> tuple[dict[str, str], list[str]]:
    """Filter and rename: (new key -> checkpoint key, selected checkpoint keys in order).

    Raises:
        LoadError: two checkpoint keys are renamed onto one key; include selects nothing.
    """
    all_keys = source.keys()
    selected = [k for k in all_keys if keyfilter.selects(k)]
    if not selected and all_keys and (keyfilter.include or keyfilter.exclude):
        patterns = [t for t, _ in keyfilter.include] or ["(all)"]
        raise LoadError(
            f"include={patterns!r} / exclude={[t for t, _ in keyfilter.exclude]!r} select none "
            f"of the {len(all_keys)} keys of {source.description}; its keys look like "
            f"{_quoted(all_keys[:5])}. A module path selects the keys under it "
            "(include='backbone'); '*' matches within a segment, '**' across segments"
        )
    key_map: dict[str, str] = {}
    collisions: dict[str, list[str]] = {}
    for k in selected:
        new = rules.apply(k)
        if new is None:
            continue
        if new in key_map:
            collisions.setdefault(new, [key_map[new]]).append(k)
        else:
            key_map[new] = k
    if collisions:
        lines = [f"{t!r} <- {', '.join(map(repr, ks))}" for t, ks in collisions.items()]
        raise LoadError(
            _listing(
                f"{len(collisions)} target key(s) would receive several checkpoint keys after "
                "renaming (each target takes exactly one); fix rename= or exclude one of them:",
                lines,
            )
        )
    return key_map, selected


def _plan(
    source: TensorSource,
    into: nn.Module,
    at: str | None,
    key_map: dict[str, str],
    selected: list[str],
    rules: RenameRules,
    *,
    strict: bool,
    on_mismatch: str,
    casting: str,
    init_missing: bool = False,
) -> _Plan:
    """Match, check and describe; change nothing.

    Raises:
        LoadError: every problem of the first failing kind, listed.
    """
    target = resolve(into, at or "")
    root = target.module
    prefix = target.container_name if target.is_slice else target.name
    model_sd = root.state_dict(keep_vars=True)
    modules = dict(root.named_modules(remove_duplicate=False))
    model_tensors = {k: v for k, v in model_sd.items() if isinstance(v, torch.Tensor)}
    # tied tensors: one object under several keys
    groups: dict[int, list[str]] = {}
    for k, v in model_tensors.items():
        groups.setdefault(id(v), []).append(k)

    report = LoadReport(source=source.description, unwrapped=source.unwrapped)
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    cast_errors: list[str] = []
    tie_errors: list[str] = []
    items: list[_Item] = []
    unexpected = [ck for new, ck in key_map.items() if new not in model_tensors]
    done: set[int] = set()

    for tensor in model_tensors.values():
        if id(tensor) in done:
            continue
        group = groups[id(tensor)]
        sources = [(k, key_map[k]) for k in group if k in key_map]
        if not sources:
            continue
        done.add(id(tensor))
        model_shape = tuple(tensor.shape)
        infos = [(k, ck, source.info(ck)) for k, ck in sources]
        bad = [(k, ck, inf) for k, ck, inf in infos if inf.shape != model_shape]
        if bad:
            for k, _ck, inf in bad:
                mismatched[_join(prefix, k)] = (inf.shape, model_shape)
            continue
        first_key, first_ckpt, info = infos[0]
        problem = _cast_problem(info.dtype, tensor.dtype, casting)
        if problem:
            cast_errors.append(
                f"{_join(prefix, first_key)!r}: {_dtype_name(info.dtype)} -> "
                f"{_dtype_name(tensor.dtype)}: {problem}"
            )
            continue
        if len(infos) > 1:  # both names of a tied tensor are in the checkpoint
            ref = source.read(first_ckpt).to(tensor.dtype)
            for k, ck, _inf in infos[1:]:
                other = source.read(ck).to(tensor.dtype)
                if not torch.equal(ref, other):
                    tie_errors.append(
                        f"{_join(prefix, first_key)!r} and {_join(prefix, k)!r} are one tied "
                        f"tensor, but checkpoint keys {first_ckpt!r} and {ck!r} differ"
                    )
        if (
            info.dtype != tensor.dtype
            and casting == "same_kind"
            and not _safe_cast(info.dtype, tensor.dtype)
        ):
            vp = _value_problem(source.read(first_ckpt), tensor.dtype)
            if vp:
                cast_errors.append(
                    f"{_join(prefix, first_key)!r}: {_dtype_name(info.dtype)} -> "
                    f"{_dtype_name(tensor.dtype)}: {vp}"
                )
                continue
        owner, name = _owner(root, first_key, modules)
        order = [first_key] + [k for k in group if k != first_key]
        items.append(
            _Item([_join(prefix, k) for k in order], first_ckpt, tensor, info, owner, name)
        )
        if tensor.is_meta:
            items[-1].owners = [_owner(root, k, modules) for k in order]
        for k in order:
            full = _join(prefix, k)
            report.loaded.append(full)
            if full != first_ckpt:
                report.renamed[full] = first_ckpt
            if info.dtype != tensor.dtype:
                report.cast[full] = (info.dtype, tensor.dtype)

    where = f" under {at!r}" if at else ""
    model_name = type(into).__name__
    if mismatched and on_mismatch == "error":
        lines = [f"{k!r}: checkpoint {a} vs model {b}" for k, (a, b) in mismatched.items()]
        skip, drop = Hint("on_mismatch", "skip"), Hint("exclude")
        raise LoadError(
            _listing(
                f"{len(mismatched)} shape mismatch(es) between {source.description} and "
                f"{model_name}{where}; nothing was loaded (pass {skip} to skip them, "
                f"or {drop} them):",
                lines,
            ),
            hints=(skip, drop),
        )
    if cast_errors:
        unsafe = Hint("casting", "unsafe")
        raise LoadError(
            _listing(
                f"{len(cast_errors)} dtype cast(s) refused under casting={casting!r}; nothing was "
                f"loaded (pass {unsafe} to allow them, or convert the checkpoint):",
                cast_errors,
            ),
            hints=(unsafe,),
        )
    if tie_errors:
        raise LoadError(
            _listing("tied parameters would be untied; nothing was loaded:", tie_errors)
        )
    report.mismatched = mismatched
    loaded_rel = {k for it in items for k in it.model_keys}
    report.missing = [
        _join(prefix, k)
        for k in model_tensors
        if _join(prefix, k) not in loaded_rel and _join(prefix, k) not in mismatched
    ]
    report.unexpected = unexpected
    report.unused_rules = rules.unused()
    if not items:
        targets = list(key_map)
        hint, hints = _zero_hint(
            targets, set(model_tensors), any(new != ck for new, ck in key_map.items())
        )
        what = f"{len(selected)} selected checkpoint key(s)"
        if mismatched:
            what += f" ({len(mismatched)} skipped for shape mismatch)"
        raise LoadError(
            f"nothing to load: none of the {what} of {source.description} matches a key of "
            f"{model_name}{where}.\n"
            f"  checkpoint keys look like: {_quoted(targets[:4]) or '(none)'}\n"
            f"  model keys look like: {_quoted(list(model_tensors)[:4]) or '(none)'}"
            + (f"\n  hint: {hint}" if hint else ""),
            hints=hints,
        )
    inits = _plan_meta(root, prefix, model_tensors, loaded_rel, report, init_missing, model_name)
    if strict and (report.missing or report.unexpected):
        strict_hints: tuple[Hint, ...] = (Hint("strict", True),)
        parts = []
        if report.missing:
            parts.append(
                _listing(f"  missing ({len(report.missing)}):", [repr(k) for k in report.missing])
            )
        if report.unexpected:
            parts.append(
                _listing(
                    f"  unexpected ({len(report.unexpected)}):",
                    [repr(k) for k in report.unexpected],
                )
            )
        if report.unexpected and all(
            k.endswith("num_batches_tracked") for k in report.unexpected
        ):  # e.g. BatchNorm statistics into FrozenBatchNorm2d, which has no counter
            strict_hints += (Hint("exclude", "**.num_batches_tracked"),)
            parts.append(f"  hint: {strict_hints[-1]}")
        raise LoadError(
            f"{strict_hints[0]}: every model key{where} must be loaded and every selected "
            f"checkpoint key used; nothing was loaded:\n" + "\n".join(parts),
            hints=strict_hints,
        )
    return _Plan(items, report, inits)


def _plan_meta(
    root: nn.Module,
    prefix: str,
    model_tensors: Mapping[str, torch.Tensor],
    loaded: set[str],
    report: LoadReport,
    init_missing: bool,
    model_name: str,
) -> list[MetaInit]:
    """Tensors (under ``at``) that would stay on meta: an error, or initializers to run.

    Raises:
        LoadError: names the tensors (without ``init_missing``) or the modules
            that have no initializer.
    """
    sharded = [
        repr(_join(prefix, k)) for k, t in model_tensors.items() if t.is_meta and is_dtensor(t)
    ]
    if sharded:
        raise LoadError(
            _listing(
                f"{len(sharded)} DTensor parameter(s) of {model_name} are on the meta device; "
                "FSDP owns its parameters, so they cannot be replaced: materialize them first "
                "(model.to_empty(device='cpu')), then load; nothing was loaded:",
                sharded,
            )
        )
    still = {k: t for k, t in model_tensors.items() if t.is_meta and _join(prefix, k) not in loaded}
    if not still:
        return []
    keys = [repr(_join(prefix, k)) for k in still]
    if not init_missing:
        raise LoadError(
            _listing(
                f"{len(still)} tensor(s) of {model_name} would still be on the meta device after "
                "this load (no storage: the model could not run); nothing was loaded. Load them "
                "too (widen include=; several sources combine into one call: "
                "load_partial({**load_partial(a, ...), **load_partial(b, ...)}, into=model)), or "
                "pass init_missing=True to initialize them on CPU with their module's "
                "reset_parameters():",
                keys,
            )
        )
    inits, problems = plan_init(root, prefix, still)
    if problems:
        raise LoadError(
            _listing(
                f"init_missing=True cannot initialize {len(problems)} module(s) of {model_name} "
                "whose tensors would stay on the meta device; nothing was loaded (load those "
                "tensors from a checkpoint, or initialize them yourself first, e.g. "
                "module.to_empty(device='cpu') and fill them):",
                problems,
            )
        )
    report.initialized = [k for init in inits for keys_, _o, _t in init.tensors for k in keys_]
    return inits


# ---------------------------------------------------------------------------
# apply
# ---------------------------------------------------------------------------


def _exclusive(t: torch.Tensor) -> bool:
    """True when nothing but ``t`` refers to its storage, which it covers exactly.

    Then new values can be swapped in (``t.data = new``) without anyone
    observing the old storage; otherwise they are copied in place.
    """
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None or type(t) not in (torch.Tensor, nn.Parameter) or t.is_meta:
        return False
    storage = t.untyped_storage()
    if t.storage_offset() != 0 or storage.nbytes() != t.nbytes:
        return False
    # references: t's own storage + the temporary `storage` object above
    return int(use_count(storage._cdata)) <= 2


def _fault(exc: BaseException, message: str) -> BaseException:
    """A LoadError that is also an instance of ``exc``'s type when possible."""
    if not isinstance(exc, Exception):
        return exc
    if isinstance(exc, SurgeryError):
        cls: type[Exception] = type(exc)
    else:
        try:
            cls = type(f"LoadError[{type(exc).__name__}]", (LoadError, type(exc)), {})
        except TypeError:
            cls = LoadError
    try:
        return cls(message)
    except Exception:
        return LoadError(message)


def _apply(plan: _Plan, source: TensorSource, *, transactional: bool) -> None:
    """Write the planned tensors into the model (the only phase that mutates).

    transactional=True: values are staged into fresh tensors first (a fault
    while reading leaves the model untouched), then tensors with shared storage
    are copied in place after a snapshot (restored on a fault), and the others
    swap in their staged storage (``param.data = staged``: the Parameter object
    stays the same, and nothing else could observe the old storage).

    transactional=False: ``target.copy_(value)`` in checkpoint order; a fault
    names the tensors already written.
    """
    # Targets on meta have no storage to write into: their values (read, or made by
    # the module's initializer) are staged first and assigned last, after every
    # other write succeeded, so a fault anywhere leaves them on meta.
    meta_values = _stage_meta(plan, source)
    items = [it for it in plan.items if not it.target.is_meta]
    _write(items, source, transactional=transactional)
    for owners, old, value in meta_values:
        install(owners, old, value)


def _stage_meta(
    plan: _Plan, source: TensorSource
) -> list[tuple[list[tuple[nn.Module, str]], torch.Tensor, torch.Tensor]]:
    """Values for the targets on meta: read without a copy when the dtype matches."""
    staged = []
    current = "?"
    seen: set[tuple[int, int]] = set()  # memory already given to another target
    try:
        for it in plan.items:
            if not it.target.is_meta:
                continue
            current = it.model_keys[0]
            value = read_for(source, it.ckpt_key, it.target).detach()
            where = (value.data_ptr(), value.nbytes)
            if value.dtype != it.target.dtype:
                value = value.to(it.target.dtype)
            elif plan.copy_meta or (value.nbytes and where in seen):
                value = value.clone()  # never tie tensors the model keeps apart
            seen.add(where)
            staged.append((it.owners, it.target, value))
        for init in plan.inits:
            current = init.module_name or "(root)"
            staged.extend(run_init([init]))
    except BaseException as exc:
        raise _fault(
            exc,
            f"materializing {current!r} failed ({type(exc).__name__}: {exc}); the model was "
            "left unchanged",
        ) from exc
    return staged


def _write(items: list[_Item], source: TensorSource, *, transactional: bool) -> None:
    """Write values into materialized targets (see :func:`_apply`)."""
    with torch.no_grad():
        if not transactional:
            written: list[str] = []
            for item in items:
                try:
                    item.target.copy_(read_for(source, item.ckpt_key, item.target))
                except BaseException as exc:
                    raise _fault(
                        exc,
                        f"writing {item.model_keys[0]!r} failed ({type(exc).__name__}: {exc}); "
                        f"transactional=False: the model is partially loaded, "
                        f"{len(written)} tensor(s) already written: {_quoted(written, _MAX_LISTED)}",
                    ) from exc
                written.extend(item.model_keys)
            return
        swap = [it for it in items if _exclusive(it.target)]
        swap_ids = {id(it) for it in swap}
        in_place = [it for it in items if id(it) not in swap_ids]
        staged: list[torch.Tensor] = []
        snapshots: list[tuple[torch.Tensor, torch.Tensor]] = []
        current = None
        try:
            for it in swap:
                current = it
                new = torch.empty_strided(
                    it.target.shape,
                    it.target.stride(),
                    dtype=it.target.dtype,
                    device=it.target.device,
                )
                new.copy_(source.read(it.ckpt_key))
                staged.append(new)
            for it in in_place:
                current = it
                snap = it.target.clone()
                snapshots.append((it.target, snap))
                it.target.copy_(read_for(source, it.ckpt_key, it.target))
        except BaseException as exc:
            for target, snap in reversed(snapshots):
                torch.ops.aten.copy_.default(target, snap)
            name = current.model_keys[0] if current is not None else "?"
            raise _fault(
                exc,
                f"writing {name!r} failed ({type(exc).__name__}: {exc}); the model was left "
                "unchanged (transactional=True)",
            ) from exc
        for it, new in zip(swap, staged):
            it.target.data = new


# ---------------------------------------------------------------------------
# the public function
# ---------------------------------------------------------------------------


def _check_args(
    into: Any,
    at: Any,
    strict: Any,
    on_mismatch: Any,
    casting: Any,
    dry_run: Any,
    transactional: Any,
    init_missing: Any = False,
) -> None:
    if into is not None and not isinstance(into, nn.Module):
        raise ArgumentError(f"into must be an nn.Module (or None), got {type(into).__name__}")
    if at is not None and into is None:
        raise ArgumentError("at= names a module of into=; pass into= too")
    if at is not None and not isinstance(at, str):
        raise ArgumentError(f"at must be a module path (str), got {type(at).__name__}")
    if on_mismatch not in ("error", "skip"):
        raise ArgumentError(f"on_mismatch must be 'error' or 'skip', got {on_mismatch!r}")
    if casting not in CASTING:
        raise ArgumentError(
            f"casting must be one of {', '.join(map(repr, CASTING))}, got {casting!r}"
        )
    for name, value in (
        ("strict", strict),
        ("dry_run", dry_run),
        ("transactional", transactional),
        ("init_missing", init_missing),
    ):
        if not isinstance(value, bool):
            raise ArgumentError(f"{name} must be True or False, got {value!r}")


def load_partial(
    source: Any,
    *,
    into: nn.Module | None = None,
    at: str | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    rename: RenameSpec = None,
    strict: bool = False,
    on_mismatch: str = "error",
    casting: str = "same_kind",
    dry_run: bool = False,
    transactional: bool = True,
    key: str | None = None,
    init_missing: bool = False,
) -> Any:
    """Load part of a checkpoint into a model, in place, all or nothing.

    Every check (selection, renaming, shapes, dtypes, tied parameters,
    strictness) happens before the first write, so on any error the model is
    exactly as it was. Parameters keep their identity, so an optimizer built
    before the load keeps working. Buffers (BatchNorm statistics) load too.

    Args:
        source: a checkpoint path (``.pt``/``.pth``/``.bin``/``.ckpt`` read with
            ``torch.load(weights_only=True, mmap=True)``, ``.safetensors``, a
            sharded ``*.index.json``), a directory holding one, a Mapping of
            tensors, or an ``nn.Module``. A wrapper (``{"model": ...}``,
            ``{"state_dict": ...}``, ...) is unwrapped; ``key=`` picks one when
            several entries hold tensors.
        into: the model to load into. Without it, the filtered, renamed state
            dict is returned as a lazy read-only Mapping.
        at: a module path in ``into``; checkpoint keys are relative to it.
        include: pattern(s) on checkpoint keys before renaming: a module path
            selects the keys under it (``"backbone"``), ``*`` matches within a
            segment, ``**`` across, ``re:`` is a regex. Default: all keys.
        exclude: pattern(s) removed from the selection.
        rename: ``{"old.prefix.": "new.prefix."}`` (dot boundaries, the longest
            prefix wins), a list of ``(regex, replacement)`` pairs applied in
            order (``re.sub``, count 1; the replacement may be a callable on the
            match), or a callable ``key -> new key | None`` (None drops).
        strict: every model key under ``at`` must be loaded and every selected
            checkpoint key used.
        on_mismatch: ``"error"`` (default) or ``"skip"`` for shape mismatches.
        casting: ``"no"``, ``"equiv"``, ``"safe"``, ``"same_kind"`` (default:
            float<->float allowed unless a finite value overflows; float to
            integer refused) or ``"unsafe"``.
        dry_run: plan and check only; return the report, change nothing.
        transactional: True (default): a fault while writing leaves the model
            unchanged (costs up to the loaded bytes in temporary memory).
            False: copy in place as tensors are read (no extra memory); a fault
            names the tensors already written.
        key: the wrapper entry of the checkpoint that holds the state dict.
        init_missing: for a model built on the meta device: tensors (under
            ``at``) that no checkpoint key fills are materialized on CPU by their
            module's own initializer (``reset_parameters()``, or
            MultiheadAttention's) and listed in ``report.initialized``. Without
            it, tensors left on meta are an error naming them.

    Into a model on the meta device (``with torch.device("meta"): model = ...``)
    exactly the loaded tensors are materialized: like
    ``load_state_dict(assign=True)``, the memory-mapped or freshly read tensor
    becomes the parameter's storage when the dtypes match (no extra copy; a
    Mapping source's own tensors are used as they are, an ``nn.Module`` source
    is copied). A parameter on meta is replaced by a new ``nn.Parameter``
    (``requires_grad`` kept); identity is kept for materialized parameters only.
    Into ``DTensor`` parameters (FSDP2), each rank reads and writes its own shard
    (a DCP checkpoint is read shard by shard).

    Returns:
        A :class:`LoadReport` when ``into`` is given, else a lazy Mapping.

    Raises:
        CheckpointError: the file is missing, unreadable, corrupt or unsafe.
        LoadError: nothing matches (with a rename hint), shape mismatches,
            refused casts, rename collisions, tied values that differ,
            non-tensor values, ``strict`` violations, or tensors left on the
            meta device; all listed.
        ArgumentError: an argument has the wrong type or value.
        PathNotFoundError: ``at`` names no module of ``into``.

    Example:
        >>> import torch, torchvision, surgery
        >>> ssl = torchvision.models.resnet18(weights=None)
        >>> ckpt = {"model": {f"backbone.{k}": v for k, v in ssl.state_dict().items()}}
        >>> clf = torchvision.models.resnet18(weights=None, num_classes=10)
        >>> report = surgery.load_partial(ckpt, into=clf, rename={"backbone.": ""},
        ...                               exclude="backbone.fc")
        >>> len(report.loaded), report.missing, report.unwrapped
        (120, ['fc.weight', 'fc.bias'], 'model')
        >>> torch.equal(clf.conv1.weight, ssl.conv1.weight)
        True
        >>> sd = surgery.load_partial(ckpt, include="backbone.layer4", rename={"backbone.": ""})
        >>> len(sd), next(iter(sd))
        (30, 'layer4.0.conv1.weight')
    """
    _check_args(into, at, strict, on_mismatch, casting, dry_run, transactional, init_missing)
    rules = RenameRules.build(rename)
    src = open_source(source, key=key)
    owned = src is not source
    keep_open = False
    try:
        keyfilter = KeyFilter.build(include, exclude, src.keys())
        key_map, selected = _select(src, keyfilter, rules)
        if into is None:
            keep_open = True
            return StateDictView(src, key_map, rules.unused())
        plan = _plan(
            src,
            into,
            at,
            key_map,
            selected,
            rules,
            strict=strict,
            on_mismatch=on_mismatch,
            casting=casting,
            init_missing=init_missing,
        )
        plan.report.dry_run = dry_run
        plan.copy_meta = isinstance(source, nn.Module)
        if not dry_run:
            _apply(plan, src, transactional=transactional)
        return plan.report
    finally:
        if owned and not keep_open:
            src.close()
