"""The load plan: select and rename checkpoint keys, match them to the model, check all.

:func:`select_keys` is the rename step (include/exclude, then ``rename``);
:func:`build_plan` matches the renamed keys to the model's tensors using shapes
and dtypes from the checkpoint's header and checks everything (shapes, casts,
layouts, tied parameters, strictness, meta targets) before anything is written.
Every problem of a kind is listed in one error. The plan's report is what
``dry_run=True`` returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from .._errors import LoadError
from .._hints import Hint
from ..paths._resolve import resolve
from ._casting import cast_problem, is_safe_cast, value_problem
from ._materialize import MetaInit, is_dtensor, plan_init
from ._rename import KeyFilter, RenameRules
from ._report import LoadReport, dtype_name, listing, quoted
from ._reshape import reshape_kind
from ._source import TensorInfo, TensorSource

__all__ = ["Item", "Plan", "bit_identical", "build_plan", "select_keys"]


@dataclass
class Item:
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
class Plan:
    items: list[Item]
    report: LoadReport
    inits: list[MetaInit] = field(default_factory=list)  # init_missing=True
    copy_meta: bool = False  # copy values assigned to meta targets (source is a live module)
    # checkpoint key -> the model's shape, for tensors loaded reshaped (read them through
    # surgery.checkpoint._reshape.ReshapedSource)
    reshape: dict[str, tuple[int, ...]] = field(default_factory=dict)


def bit_identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape, dtype and bytes: NaN equals NaN (``torch.equal`` says it does not)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not a.numel():
        return True
    return torch.equal(
        a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8)
    )


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _owner(
    root: nn.Module, rel_key: str, modules: Mapping[str, nn.Module] | None = None
) -> tuple[nn.Module, str]:
    mod_path, _, name = rel_key.rpartition(".")
    if modules is not None and mod_path in modules:  # named_modules(), built once per plan
        return modules[mod_path], name
    return (root.get_submodule(mod_path) if mod_path else root), name


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


def select_keys(
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
            f"{quoted(all_keys[:5])}. A module path selects the keys under it "
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
            listing(
                f"{len(collisions)} target key(s) would receive several checkpoint keys after "
                "renaming (each target takes exactly one); fix rename= or exclude one of them:",
                lines,
            )
        )
    return key_map, selected


def build_plan(
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
    reshape: bool = False,
) -> Plan:
    """Match, check and describe; change nothing.

    ``reshape`` (``on_mismatch="reshape"``, ``rename="auto"``): a checkpoint
    tensor that holds the model tensor's values in another shape (see
    :func:`surgery.checkpoint._reshape.reshape_kind`) is loaded reshaped.

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
    reshaped: dict[str, tuple[int, ...]] = {}  # checkpoint key -> model shape
    cast_errors: list[str] = []
    tie_errors: list[str] = []
    items: list[Item] = []
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
        stored = {ck: inf.shape for _k, ck, inf in infos}
        if reshape:
            infos = [
                (k, ck, TensorInfo(model_shape, inf.dtype))
                if reshape_kind(inf.shape, model_shape)
                else (k, ck, inf)
                for k, ck, inf in infos
            ]
        bad = [(k, ck, inf) for k, ck, inf in infos if inf.shape != model_shape]
        if bad:
            for k, _ck, inf in bad:
                mismatched[_join(prefix, k)] = (inf.shape, model_shape)
            continue
        first_key, first_ckpt, info = infos[0]
        problem = cast_problem(info.dtype, tensor.dtype, casting)
        if problem:
            cast_errors.append(
                f"{_join(prefix, first_key)!r}: {dtype_name(info.dtype)} -> "
                f"{dtype_name(tensor.dtype)}: {problem}"
            )
            continue
        if len(infos) > 1:  # both names of a tied tensor are in the checkpoint
            ref = source.read(first_ckpt).reshape(model_shape).to(tensor.dtype)
            for k, ck, _inf in infos[1:]:
                other = source.read(ck).reshape(model_shape).to(tensor.dtype)
                if not bit_identical(ref, other):
                    tie_errors.append(
                        f"{_join(prefix, first_key)!r} and {_join(prefix, k)!r} are one tied "
                        f"tensor, but checkpoint keys {first_ckpt!r} and {ck!r} differ"
                    )
        if (
            info.dtype != tensor.dtype
            and casting == "same_kind"
            and not is_safe_cast(info.dtype, tensor.dtype)
        ):
            vp = value_problem(source.read(first_ckpt), tensor.dtype)
            if vp:
                cast_errors.append(
                    f"{_join(prefix, first_key)!r}: {dtype_name(info.dtype)} -> "
                    f"{dtype_name(tensor.dtype)}: {vp}"
                )
                continue
        owner, name = _owner(root, first_key, modules)
        order = [first_key] + [k for k in group if k != first_key]
        items.append(Item([_join(prefix, k) for k in order], first_ckpt, tensor, info, owner, name))
        if tensor.is_meta:
            items[-1].owners = [_owner(root, k, modules) for k in order]
        for _k, ck, _inf in infos:
            if stored[ck] != model_shape:
                reshaped[ck] = model_shape
        for k in order:
            full = _join(prefix, k)
            ck = key_map.get(k, first_ckpt)
            if stored.get(ck, model_shape) != model_shape:
                report.reshaped[full] = (stored[ck], model_shape)
            report.loaded.append(full)
            if full != first_ckpt:
                report.renamed[full] = first_ckpt
            if info.dtype != tensor.dtype:
                report.cast[full] = (info.dtype, tensor.dtype)

    where = f" under {at!r}" if at else ""
    model_name = type(into).__name__
    if mismatched and on_mismatch in ("error", "reshape"):
        lines = [f"{k!r}: checkpoint {a} vs model {b}" for k, (a, b) in mismatched.items()]
        skip, drop = Hint("on_mismatch", "skip"), Hint("exclude")
        raise LoadError(
            listing(
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
            listing(
                f"{len(cast_errors)} dtype cast(s) refused under casting={casting!r}; nothing was "
                f"loaded (pass {unsafe} to allow them, or convert the checkpoint):",
                cast_errors,
            ),
            hints=(unsafe,),
        )
    if tie_errors:
        raise LoadError(listing("tied parameters would be untied; nothing was loaded:", tie_errors))
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
            f"  checkpoint keys look like: {quoted(targets[:4]) or '(none)'}\n"
            f"  model keys look like: {quoted(list(model_tensors)[:4]) or '(none)'}"
            + (f"\n  hint: {hint}" if hint else ""),
            hints=hints,
        )
    inits = _plan_meta(root, prefix, model_tensors, loaded_rel, report, init_missing, model_name)
    if strict and (report.missing or report.unexpected):
        strict_hints: tuple[Hint, ...] = (Hint("strict", True),)
        parts = []
        if report.missing:
            parts.append(
                listing(f"  missing ({len(report.missing)}):", [repr(k) for k in report.missing])
            )
        if report.unexpected:
            parts.append(
                listing(
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
    return Plan(items, report, inits, reshape=reshaped)


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
            listing(
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
            listing(
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
            listing(
                f"init_missing=True cannot initialize {len(problems)} module(s) of {model_name} "
                "whose tensors would stay on the meta device; nothing was loaded (load those "
                "tensors from a checkpoint, or initialize them yourself first, e.g. "
                "module.to_empty(device='cpu') and fill them):",
                problems,
            )
        )
    report.initialized = [k for init in inits for keys_, _o, _t in init.tensors for k in keys_]
    return inits
