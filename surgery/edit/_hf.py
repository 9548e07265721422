"""Declared heads of Hugging Face ``transformers`` models, for ``replace_head``.

A ``transformers.PreTrainedModel`` declares its heads, so nothing is traced:

* an LM head is ``model.get_output_embeddings()``. A tied head stays tied by
  default and is resized with the model's own ``resize_token_embeddings``,
  run on a structural copy (the caller's model is not touched until every new
  module is built); ``tie=False`` unties it: a new ``Linear`` replaces the head,
  the input embedding keeps its size and ``config.tie_word_embeddings``
  becomes False. A :class:`~surgery.SurgeryWarning` says what happened to the tie.
* a classification head (sequence, token, image classification: ``classifier``,
  ``score``, ``classifier.out_proj``...) is the Linear or convolution layer
  outside the base model (``base_model_prefix``) whose number of outputs is
  ``config.num_labels``; exactly one must match, otherwise the call refuses
  and lists the candidates. ``config.num_labels``, ``id2label`` and
  ``label2id`` (and a root ``num_labels`` attribute) follow the new count.

The planner returns a :class:`HeadPlan` (the new modules, where they go, the
config values); :meth:`HeadPlan.plan_into` records them on the edit engine's
:class:`~surgery.edit._engine.Planner` (module replacements as edits, config and
root attributes as settings), so ``dry_run=True`` shows them and the engine's
commit installs them all at once or not at all.
``transformers`` is never imported here: a model is a ``PreTrainedModel`` only
if ``transformers`` is already loaded (see :func:`is_pretrained`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._errors import ArgumentError, LayerNotFoundError, SurgeryWarning
from ..paths._resolve import module_paths, resolve
from ._engine import Planner
from ._plan import Setting

__all__ = ["HeadPlan", "config_settings", "hf_label_sync", "is_pretrained", "plan_hf_head"]

_log = logging.getLogger("surgery")

_HEADS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NOT_FOUND = (
    "cannot find the classification head of {cls}: {why}.\n"
    "  {where}:\n{listing}\n"
    "  pass the head explicitly: surgery.replace_head(model, {n}, path={path!r})"
)


def is_pretrained(model: object) -> bool:
    """True for a ``transformers.PreTrainedModel``; never imports ``transformers``.

    Example:
        >>> import torchvision
        >>> is_pretrained(torchvision.models.resnet18(weights=None))
        False
    """
    tf = sys.modules.get("transformers")
    cls = getattr(tf, "PreTrainedModel", None) if tf is not None else None
    return isinstance(cls, type) and isinstance(model, cls)


@dataclass
class HeadPlan:
    """What ``replace_head`` will do to a ``PreTrainedModel``, built before anything changes.

    Attributes:
        replacements: ``(paths, new module)``: every path where the old module
            lives gets the new one (a shared module stays shared).
        config: ``model.config`` attribute -> new value.
        root: root attribute (``num_labels``, ``vocab_size``) -> new value, set
            only where the model has an int there.
        found: what was replaced and how it was found (for the log).
        warning: the message of the SurgeryWarning about the tie, if any.
    """

    replacements: list[tuple[list[str], nn.Module]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    root: dict[str, int] = field(default_factory=dict)
    found: str = ""
    warning: str | None = None

    def plan_into(self, planner: Planner, model: nn.Module) -> None:
        """Record the new modules (edits) and config/root values (settings) on ``planner``."""
        for paths, new in self.replacements:
            if not paths:
                raise ArgumentError(f"the {type(new).__name__} to replace is not in the model")
            planner.replace(resolve(model, paths[0]).module, new, path=paths[0])
        config_settings(planner, model, self.config)
        for key, value in self.root.items():
            current = getattr(model, key, None)
            if isinstance(current, int) and not isinstance(current, bool) and current != value:
                planner.set(model, "attr", key, value, setting=Setting("", key, current, value))

    def report(self, model: nn.Module) -> None:
        """After the commit: log what was found, warn about the tie."""
        if self.found:
            _log.info("replace_head(%s): %s", type(model).__name__, self.found)
        if self.warning is not None:
            warnings.warn(self.warning, SurgeryWarning, stacklevel=3)


def config_settings(planner: Planner, model: nn.Module, values: dict[str, Any]) -> None:
    """Record ``model.config.<key> = value`` writes as settings ``("", "config.<key>")``.

    The writes are plain ``setattr`` on the config object, made by the engine's
    commit together with the structural edits; ``dry_run`` shows them.
    """
    cfg = getattr(model, "config", None)
    for key, value in values.items():
        old = getattr(cfg, key, None)
        if old is value:
            continue
        planner.set(cfg, "attr", key, value, setting=Setting("", f"config.{key}", old, value))


def _paths(model: nn.Module, module: nn.Module) -> list[str]:
    return [p for p in module_paths(model).get(id(module), []) if p]


def _describe(m: nn.Module) -> str:
    if isinstance(m, nn.Linear):
        return f"Linear({m.in_features} -> {m.out_features})"
    if isinstance(m, _HEADS):
        return f"{type(m).__name__}({m.in_channels} -> {m.out_channels})"  # type: ignore[union-attr]
    return type(m).__name__


def _outputs(m: nn.Module) -> int | None:
    if isinstance(m, nn.Linear):
        return int(m.out_features)
    if isinstance(m, _HEADS):
        return int(m.out_channels)  # type: ignore[union-attr,arg-type]
    return None


def _label_config(model: nn.Module, num_classes: int) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "num_labels"):
        return {}
    old = getattr(cfg, "id2label", None) or {}
    if isinstance(old, dict) and len(old) == num_classes:
        id2label = {int(k): v for k, v in old.items()}
    else:
        id2label = {i: f"LABEL_{i}" for i in range(num_classes)}
    return {
        "num_labels": num_classes,
        "id2label": id2label,
        "label2id": {v: k for k, v in id2label.items()},
    }


# ----------------------------------------------------------------------------- classification


def _outside_base(model: nn.Module) -> list[tuple[str, nn.Module]]:
    prefix = getattr(model, "base_model_prefix", "") or ""
    inner = prefix if getattr(model, prefix, None) is not None and prefix else None
    return [
        (name, m)
        for name, m in model.named_modules()
        if name and not (inner and (name == inner or name.startswith(inner + ".")))
    ]


def _classifier(model: nn.Module, num_classes: int) -> tuple[str, nn.Module]:
    cfg = getattr(model, "config", None)
    want = getattr(cfg, "num_labels", None)
    prefix = getattr(model, "base_model_prefix", "") or ""
    # no base model under base_model_prefix: a base model itself (BertModel), or a head
    # class that keeps its parts elsewhere (WhisperForAudioClassification.encoder)
    base = getattr(model, prefix, None) is None
    layers = [(n, m) for n, m in _outside_base(model) if isinstance(m, _HEADS)]
    matches = [(n, m) for n, m in layers if want is not None and _outputs(m) == want]
    if base:  # then only a direct child of the model is a head (its .classifier)
        matches = [(n, m) for n, m in matches if "." not in n]
    if len(matches) == 1:
        return matches[0]
    shown = matches or layers[-8:]
    listing = "\n".join(f"    {n!r} {_describe(m)}" for n, m in shown) or "    (none)"
    if base:
        why = "it is a base model, without a head (load a model class with a head)"
        where = "its last Linear/convolution layers"
    else:
        where = f"Linear/convolution layers outside the base model {prefix!r}"
        why = (
            f"{len(matches)} layers have config.num_labels={want} outputs"
            if matches
            else f"no Linear/convolution layer outside the base model has "
            f"config.num_labels={want} outputs"
        )
    raise LayerNotFoundError(
        _NOT_FOUND.format(
            cls=type(model).__name__,
            why=why,
            where=where,
            listing=listing,
            n=num_classes,
            path=shown[-1][0] if shown else "classifier",
        )
    )


def _classification_plan(
    model: nn.Module,
    num_classes: int,
    name: str,
    old: nn.Module,
    new_head: Callable[[nn.Module, int, str], nn.Module],
    how: str,
) -> HeadPlan:
    new = new_head(old, num_classes, name)
    config = _label_config(model, num_classes) if _outputs(old) == _config_labels(model) else {}
    root = {"num_labels": num_classes} if config else {}
    return HeadPlan(
        [(_paths(model, old), new)],
        config,
        root,
        f"{name!r} ({_describe(old)}) found by {how}",
    )


def _config_labels(model: nn.Module) -> int | None:
    return getattr(getattr(model, "config", None), "num_labels", None)


# ----------------------------------------------------------------------------- LM head


def _resized_copy(model: nn.Module, num_tokens: int, emb: nn.Module, out: nn.Module) -> nn.Module:
    """A structural copy of ``model`` resized by its own ``resize_token_embeddings``.

    Every tensor is shared with ``model`` except the embedding's and the head's,
    which ``resize_token_embeddings`` overwrites in place (they are cloned here),
    so the caller's model is never changed.
    """
    own = {id(t) for t in (*emb.parameters(), *out.parameters())}
    memo: dict[int, Any] = {}
    for t in (*model.parameters(), *model.buffers()):
        if id(t) not in own:
            memo[id(t)] = t
    clone = copy.deepcopy(model, memo)
    mean = next(iter(emb.parameters())).device.type != "meta"
    try:
        clone.resize_token_embeddings(num_tokens, mean_resizing=mean)  # type: ignore[operator]
    except Exception as e:
        raise ArgumentError(
            f"{type(model).__name__}.resize_token_embeddings({num_tokens}) failed: "
            f"{type(e).__name__}: {e}"
        ) from e
    return clone


def _config_diff(old: Any, new: Any) -> dict[str, Any]:
    before, after = old.to_dict(), new.to_dict()
    return {k: getattr(new, k) for k, v in after.items() if before.get(k, object()) != v}


def _untied_head(model: nn.Module, old: nn.Module, num_tokens: int) -> nn.Module:
    """A new Linear head with ``num_tokens`` rows; rows the old head had are kept."""
    weight: torch.Tensor = getattr(old, "weight")  # noqa: B009 - a Module attribute
    bias: torch.Tensor | None = getattr(old, "bias", None)
    new = nn.Linear(
        int(weight.shape[1]),
        num_tokens,
        bias=bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    init = getattr(model, "_init_weights", None)
    if callable(init):
        with contextlib.suppress(Exception):  # optional: PyTorch's default init stays
            init(new)
    keep = min(num_tokens, weight.shape[0])
    if weight.device.type != "meta":
        with torch.no_grad():
            new.weight[:keep].copy_(weight[:keep])
            if bias is not None and new.bias is not None:
                new.bias[:keep].copy_(bias[:keep])
    new.weight.requires_grad_(bool(weight.requires_grad))
    new.train(old.training)
    return new


def _lm_plan(model: nn.Module, num_classes: int, tie: bool | None, out: nn.Module) -> HeadPlan:
    cls = type(model).__name__
    emb = model.get_input_embeddings()  # type: ignore[operator]
    out_paths, emb_paths = _paths(model, out), _paths(model, emb)
    o, e = (out_paths or ["?"])[0], (emb_paths or ["?"])[0]
    weight = getattr(out, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ArgumentError(f"the LM head {o!r} ({type(out).__name__}) has no 2-d weight")
    tied = weight is getattr(emb, "weight", None)
    keep_tied = tied if tie is None else tie
    if num_classes == 0:
        if tie is True:
            raise ArgumentError(
                "num_classes=0 removes the LM head, so it cannot stay tied: drop tie=True"
            )
        config = {"tie_word_embeddings": False} if tied else {}
        return HeadPlan(
            [(out_paths, nn.Identity())],
            config,
            {},
            f"{o!r} (get_output_embeddings())",
            f"replace_head({cls}, 0): the LM head {o!r} is now Identity: the model returns "
            f"hidden states"
            + (
                f"; {e!r} is no longer tied to it (config.tie_word_embeddings=False)"
                if tied
                else ""
            ),
        )
    found = f"{o!r} (get_output_embeddings(), {weight.shape[0]} tokens)"
    if keep_tied:
        clone = _resized_copy(model, num_classes, emb, out)
        new_emb = clone.get_input_embeddings()  # type: ignore[operator]
        new_out = clone.get_output_embeddings()  # type: ignore[operator]
        if new_out.weight is not new_emb.weight:
            new_out.weight = new_emb.weight
        config = _config_diff(model.config, clone.config)  # type: ignore[union-attr]
        if not tied:
            config["tie_word_embeddings"] = True
        what = "stays tied to" if tied else "is now tied to"
        return HeadPlan(
            [(emb_paths, new_emb), (out_paths, new_out)],
            config,
            {"vocab_size": num_classes},
            found,
            f"replace_head({cls}, {num_classes}): the LM head {o!r} {what} the input embedding "
            f"{e!r}; both resized to {num_classes} tokens by {cls}.resize_token_embeddings "
            f"(pass tie=False to resize the head alone)",
        )
    new = _untied_head(model, out, num_classes)
    config = {"tie_word_embeddings": False} if tied or _cfg_tied(model) else {}
    note = (
        f"is untied from {e!r} (config.tie_word_embeddings=False)"
        if tied
        else f"was not tied to {e!r} and stays untied"
    )
    return HeadPlan(
        [(out_paths, new)],
        config,
        {},
        found,
        f"replace_head({cls}, {num_classes}): the LM head {o!r} is a new Linear("
        f"{weight.shape[1]} -> {num_classes}) and {note}; the input embedding keeps "
        f"{weight.shape[0] if tied else _rows(emb)} tokens",
    )


def _cfg_tied(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))


def _rows(emb: nn.Module) -> Any:
    w = getattr(emb, "weight", None)
    return w.shape[0] if isinstance(w, torch.Tensor) else "its"


# ----------------------------------------------------------------------------- entry point


def plan_hf_head(
    model: nn.Module,
    num_classes: int,
    *,
    path: list[str] | None,
    tie: bool | None,
    new_head: Callable[[nn.Module, int, str], nn.Module],
) -> HeadPlan | None:
    """The head plan of a ``PreTrainedModel``; None for other models (generic discovery).

    ``new_head(old, num_classes, path)`` builds a classification layer (the
    generic re-heading rule: same in_features, bias, device, dtype).

    Raises:
        ArgumentError: ``tie`` is not None/True/False, or ``tie`` is given for a
            model without an LM head.
        LayerNotFoundError: no single classification head; lists the candidates.
    """
    if tie is not None and not isinstance(tie, bool):
        raise ArgumentError(f"tie must be True, False or None, got {tie!r}")
    if not is_pretrained(model):
        if tie is not None:
            raise ArgumentError(
                f"tie= is for the LM head of a transformers model; {type(model).__name__} is "
                f"not one: drop tie="
            )
        return None
    out = None
    get_out = getattr(model, "get_output_embeddings", None)
    if callable(get_out):
        try:
            out = get_out()
        except Exception:  # some models raise instead of returning None
            out = None
    if path is not None:
        named = [resolve(model, p) for p in path]
        if out is not None and any(t.module is out for t in named):
            if len(named) != 1:
                raise ArgumentError("the LM head is re-headed alone: pass path= with one path")
            return _lm_plan(model, num_classes, tie, out)
        if tie is not None:
            raise ArgumentError(f"tie= is for the LM head, and path={path!r} is not it")
        return None  # explicit classification paths: the generic rule, config synced below
    if isinstance(out, nn.Module):
        return _lm_plan(model, num_classes, tie, out)
    if tie is not None:
        raise ArgumentError(
            f"tie= is for an LM head, and {type(model).__name__}.get_output_embeddings() is None"
        )
    name, old = _classifier(model, num_classes)
    return _classification_plan(
        model, num_classes, name, old, new_head, "config.num_labels (outside the base model)"
    )


def hf_label_sync(model: nn.Module, old_heads: list[nn.Module], num_classes: int) -> HeadPlan:
    """Config values for explicitly named classification heads of a ``PreTrainedModel``.

    ``config.num_labels`` follows only when an old head had that many outputs.
    """
    if not is_pretrained(model) or not any(_outputs(h) == _config_labels(model) for h in old_heads):
        return HeadPlan()
    config = _label_config(model, num_classes)
    return HeadPlan([], config, {"num_labels": num_classes} if config else {})
