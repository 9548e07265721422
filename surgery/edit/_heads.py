"""Re-heading: ``replace_head`` puts a fresh classifier in place of a model's head.

The head is found by the policy of :mod:`surgery.edit._discover`: ``path=``,
then what a timm model declares (its own ``reset_classifier``, learned on a
meta copy by :mod:`surgery.edit._declared`), then tracing a meta copy. The new
heads are built and checked first, then swapped by the edit engine. What was
found is logged on the ``"surgery"`` logger at INFO level.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from torch import nn

from .._boundary import building, operation
from .._errors import ArgumentError
from ..paths._resolve import check_model, resolve
from ..trace._meta import meta_copy
from ._declared import plan_timm_reset
from ._discover import CONV, HEAD_TYPES, declared_paths, describe, resolves, traced_heads, where
from ._engine import Planner, check_aliases, run_plan
from ._head_layers import check_count
from ._hf import hf_label_sync, plan_hf_head
from ._plan import EditPlan, Setting
from ._probe import meta_runs, probe_inputs

__all__ = ["replace_head"]

_log = logging.getLogger("surgery")


def _paths_arg(path: object) -> list[str] | None:
    if path is None:
        return None
    if isinstance(path, str):
        return [path]
    if isinstance(path, Sequence) and path and all(isinstance(p, str) for p in path):
        return list(path)
    raise ArgumentError(f"path must be a module path or a list of paths, got {path!r}")


def _new_head(old: nn.Module, num_classes: int, path: str) -> nn.Module:
    """A fresh head for ``old``; an allocation failure names the head (model unchanged)."""
    with building(
        f"build the new head {path!r} ({describe(old)} -> {num_classes} outputs)",
        hint=".\n  use a smaller num_classes, or build the model on the meta device first",
        path=path,
    ):
        return _build_head(old, num_classes, path)


def _build_head(old: nn.Module, num_classes: int, path: str) -> nn.Module:
    if num_classes == 0:
        return nn.Identity()
    device, dtype = where(old)
    new: nn.Module
    if isinstance(old, nn.LazyLinear):
        new = nn.LazyLinear(num_classes, bias=old.bias is not None, device=device, dtype=dtype)
    elif isinstance(old, nn.Linear):
        new = nn.Linear(
            old.in_features, num_classes, bias=old.bias is not None, device=device, dtype=dtype
        )
    elif isinstance(old, CONV):
        if num_classes % old.groups:
            raise ArgumentError(
                f"the head {path!r} is a grouped convolution (groups={old.groups}): "
                f"num_classes={num_classes} must be a multiple of {old.groups}"
            )
        cls: Any = next(c for c in CONV if isinstance(old, c))
        new = cls(
            old.in_channels,
            num_classes,
            old.kernel_size,
            old.stride,
            old.padding,
            old.dilation,
            old.groups,
            old.bias is not None,
            old.padding_mode,
            device=device,
            dtype=dtype,
        )
    elif isinstance(old, nn.Identity):
        raise ArgumentError(
            f"cannot re-head {path!r}: it is an Identity (the head was removed), so the number "
            f"of input features is unknown.\n  put a head there yourself: "
            f"surgery.replace(model, {path!r}, nn.Linear(in_features, {num_classes}))"
        )
    else:
        raise ArgumentError(
            f"cannot re-head {path!r}: it is a {type(old).__name__}; path= must name a Linear or "
            f"convolution layer (or a container whose last such layer is the head)"
        )
    new.train(old.training)
    return new


def _explicit_heads(model: nn.Module, paths: list[str]) -> list[tuple[str, nn.Module]]:
    out: list[tuple[str, nn.Module]] = []
    for p in paths:
        target = resolve(model, p)
        if target.parent is None or target.is_slice:
            raise ArgumentError(f"path={p!r} must name one layer, not the root or a slice")
        mod = target.module
        if not isinstance(mod, HEAD_TYPES) and any(True for _ in mod.children()):
            inner = [(n, m) for n, m in mod.named_modules() if n and isinstance(m, HEAD_TYPES)]
            if inner:  # a container: its last Linear/conv layer
                name, mod = inner[-1]
                out.append((f"{target.name}.{name}", mod))
                continue
        out.append((target.name, mod))
    return out


_NO_FEATURES = (
    "cannot remove the head{s} {listing} of {model} (num_classes=0): with Identity there the "
    "model no longer runs ({error}); what the head{s} received is combined with other values "
    "after {them}, so there is no lossless features output.\n  re-head it instead: "
    "surgery.replace_head(model, n) with n >= 1, or take the features with surgery.cut(model, "
    "'...') at the layer you need"
)


def _check_removable(
    model: nn.Module, planner: Planner, heads: dict[int, tuple[str, nn.Module]]
) -> None:
    """Refuse ``num_classes=0`` when Identity at every head gives a model that does not run.

    Checked on a meta copy (the original must run there on a probe input; if it
    cannot, nothing is proved and nothing is refused).
    """
    inputs = probe_inputs(model)
    if inputs is None or not heads:
        return
    clone = meta_copy(model).eval()
    if meta_runs(clone, inputs) is not None:
        return
    for _, old in heads.values():
        for p in planner.paths_of(old):
            clone.set_submodule(p, nn.Identity())
    error = meta_runs(clone, inputs)
    if error is None:
        return
    names = [n for n, _ in heads.values()]
    raise ArgumentError(
        _NO_FEATURES.format(
            s="s" if len(names) > 1 else "",
            listing=", ".join(map(repr, names)),
            model=type(model).__name__,
            error=error,
            them="them" if len(names) > 1 else "it",
        ),
        path=names[0],
    )


def replace_head(
    model: nn.Module,
    num_classes: int,
    *,
    path: str | Sequence[str] | None = None,
    tie: bool | None = None,
    aliases: str = "warn",
    dry_run: bool = False,
) -> nn.Module | EditPlan:
    """Replace the classifier of ``model`` by a fresh one with ``num_classes`` outputs, in place.

    The head is found in this order: ``path=`` (one path or a list; a container
    means its last Linear/convolution layer); what a timm model declares
    (``pretrained_cfg["classifier"]`` with its own ``reset_classifier``, whose
    effect is learned on a meta copy and then planned here with freshly built
    modules, so distillation and auxiliary heads are resized, dropped or
    removed exactly as timm does; if that reset fails, the declared heads are
    replaced directly); otherwise the Linear or convolution layer(s) that
    produce the logits, found by tracing a meta copy in training mode, so
    auxiliary heads (inception_v3 ``AuxLogits.fc``, googlenet ``aux1.fc2`` and
    ``aux2.fc2``) and parallel heads (distilled transformers) are all replaced.
    What was found is logged on the ``"surgery"`` logger.

    A new Linear keeps ``in_features``, a new convolution (squeezenet's 1x1 head)
    keeps kernel, stride, padding and groups; both keep bias presence, device and
    dtype (meta stays meta) and the train/eval mode of the old head. A root
    attribute ``num_classes`` is updated. Every new head is built before the
    model changes; a head shared by several paths is replaced at all of them
    (one :class:`~surgery.SharedModuleWarning`; ``aliases="error"`` refuses).

    ``num_classes=0`` puts ``nn.Identity`` in place of each head, so the model
    returns what the head received: the pooled features for most models
    ``(N, in_features)``. For squeezenet (``Dropout -> Conv2d -> ReLU ->
    AdaptiveAvgPool2d`` then ``flatten``) it returns
    ``flatten(avgpool(relu(features(x))))``, i.e. the average-pooled final
    features, ``(N, 512)``. Where Identity at the heads gives a model that no
    longer runs (checked by a forward on a meta copy), e.g. LRASPP, which adds
    the outputs of two classifiers of different widths, there is no features
    output and it refuses, saying why.

    A Hugging Face ``transformers.PreTrainedModel`` uses the heads it declares
    (nothing is traced): its LM head is ``get_output_embeddings()`` (a tied head
    stays tied and is resized with the model's own ``resize_token_embeddings``;
    ``tie=False`` gives a new, untied head and the input embedding keeps its
    size; a ``SurgeryWarning`` says what happened to the tie); its
    classification head is the one Linear layer outside the base model with
    ``config.num_labels`` outputs, and ``config.num_labels``, ``id2label`` and
    ``label2id`` follow the new count (see docs/huggingface.md). The config
    values are settings of the plan, written in the same commit as the heads.

    Args:
        model: the model to change, in place.
        num_classes: outputs of the new head; 0 removes the head.
        path: the head's path (or a list of paths), when discovery is not wanted.
        tie: for a transformers LM head only: None keeps the tie as it is,
            False unties the head from the input embedding, True ties it.
        aliases: ``"warn"`` (default) or ``"error"`` for a shared head.
        dry_run: return the :class:`~surgery.EditPlan` and change nothing
            (for a transformers model: not its config either; the plan's
            settings show the ``config.*`` values it would write).

    Returns:
        ``model`` itself (the plan with ``dry_run=True``).

    Raises:
        ArgumentError: ``num_classes`` is not an int >= 0, ``path`` names a
            layer that is not a Linear or convolution, the new head cannot
            be allocated, or ``num_classes=0`` would leave a model that does
            not run.
        PathNotFoundError: ``path`` names no module.
        LayerNotFoundError: no head, or an ambiguous one, was found; the message
            lists the candidates and shows the ``path=`` call.

    On any error the model is unchanged.

    Example:
        >>> import torchvision, surgery
        >>> m = surgery.replace_head(torchvision.models.resnet18(weights=None), 10)
        >>> m.fc
        Linear(in_features=512, out_features=10, bias=True)
        >>> import torch
        >>> with torch.device("meta"):
        ...     m = torchvision.models.inception_v3(weights=None, init_weights=False)
        >>> _ = surgery.replace_head(m, 5)
        >>> m.fc.out_features, m.AuxLogits.fc.out_features, m.fc.weight.device.type
        (5, 5, 'meta')
        >>> [e.path for e in surgery.replace_head(m, 7, dry_run=True).edits]
        ['fc', 'AuxLogits.fc']
    """
    with operation("replace_head", model=model, path=path if isinstance(path, str) else None):
        check_model(model, "replace_head")
        check_count(num_classes, "num_classes", 0)
        paths = _paths_arg(path)
        policy = check_aliases(aliases)
        planner = Planner(model, "replace_head")
        hf = plan_hf_head(model, num_classes, path=paths, tie=tie, new_head=_new_head)
        if hf is not None:  # a transformers model's declared head (and its config)
            hf.plan_into(planner, model)
            plan = run_plan(planner.finish(policy), dry_run=dry_run)
            if dry_run:
                return plan
            hf.report(model)
            return model
        how = "path="
        if paths is None:
            declared = [p for p in declared_paths(model, "classifier") if resolves(model, p)]
            resets = callable(getattr(model, "reset_classifier", None))
            if declared and resets and plan_timm_reset(model, num_classes, planner, declared):
                plan = run_plan(planner.finish(policy), dry_run=dry_run)
                _log.info(
                    "replace_head(%s): %s declared by pretrained_cfg['classifier'], re-headed as "
                    "its reset_classifier does (learned on a meta copy) -> %d classes",
                    type(model).__name__,
                    ", ".join(map(repr, declared)),
                    num_classes,
                )
                return plan if dry_run else model
            if declared:
                paths, how = declared, "pretrained_cfg['classifier']"
            else:
                paths, how = traced_heads(model, num_classes), "tracing"
        heads: dict[int, tuple[str, nn.Module]] = {}
        for name, old in _explicit_heads(model, paths):
            heads.setdefault(id(old), (name, old))  # one object: one edit (at all its paths)
        if num_classes == 0:
            _check_removable(model, planner, heads)
        # every new module is built (and checked) before anything changes
        for name, old in heads.values():
            planner.replace(old, _new_head(old, num_classes, name), path=name)
        # a transformers model's config.num_labels/id2label/label2id follow
        labels = hf_label_sync(model, [old for _, old in heads.values()], num_classes)
        labels.plan_into(planner, model)
        current = getattr(model, "num_classes", None)
        if isinstance(current, int) and not isinstance(current, bool) and current != num_classes:
            planner.set(
                model,
                "dict",
                "num_classes",
                num_classes,
                setting=Setting("", "num_classes", current, num_classes),
            )
        plan = run_plan(planner.finish(policy), dry_run=dry_run)
        _log.info(
            "replace_head(%s): %s found by %s -> %d classes",
            type(model).__name__,
            ", ".join(f"{n!r} ({describe(o)})" for n, o in heads.values()),
            how,
            num_classes,
        )
        return plan if dry_run else model
