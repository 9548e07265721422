"""What is trainable: :func:`trainable` and its report (:class:`TrainableReport`)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from .._errors import ArgumentError
from ..paths._resolve import check_model
from ._batchnorm import bn_policy

__all__ = ["TrainableReport", "TrainableRow", "trainable"]


@dataclass(frozen=True)
class TrainableRow:
    """One top-level module: parameter counts (elements) and its BatchNorm layers by policy.

    Example:
        >>> import torchvision, surgery
        >>> m = torchvision.models.resnet18(weights=None)
        >>> row = surgery.trainable(surgery.freeze(m, "layer1"))["layer1"]
        >>> row.trainable, row.frozen, row.state, row.bn
        (0, 147968, 'frozen', {'eval': 4})
    """

    name: str
    type: str
    trainable: int
    frozen: int
    bn: dict[str, int] = field(default_factory=dict)

    @property
    def state(self) -> str:
        if self.trainable and self.frozen:
            return "partly frozen"
        if self.frozen:
            return "frozen"
        return "trainable" if self.trainable else "-"


@dataclass
class TrainableReport:
    """The result of :func:`trainable`: ``rows`` as data, ``str()`` as a table.

    ``report[name]`` is the row of a top-level module; ``to_dict()`` and
    ``to_json()`` give the same data for tools.

    Example:
        >>> import torchvision, surgery
        >>> m = torchvision.models.resnet18(weights=None)
        >>> report = surgery.trainable(surgery.freeze(m))
        >>> report.trainable, report.frozen
        (0, 11689512)
        >>> report.to_dict()["rows"][1]
        {'name': 'bn1', 'type': 'BatchNorm2d', 'trainable': 0, 'frozen': 128, 'bn': {'eval': 1}, 'state': 'frozen'}
    """

    model_type: str
    rows: list[TrainableRow] = field(default_factory=list)

    @property
    def trainable(self) -> int:
        return sum(r.trainable for r in self.rows)

    @property
    def frozen(self) -> int:
        return sum(r.frozen for r in self.rows)

    def __getitem__(self, name: str) -> TrainableRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise ArgumentError(
            f"no row {name!r} in this report; rows: {', '.join(r.name for r in self.rows)}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_type": self.model_type,
            "trainable": self.trainable,
            "frozen": self.frozen,
            "rows": [{**asdict(r), "state": r.state} for r in self.rows],
        }

    def to_json(self, **kwargs: Any) -> str:
        kwargs.setdefault("indent", 2)
        return json.dumps(self.to_dict(), sort_keys=True, **kwargs)

    def __str__(self) -> str:
        total = self.trainable + self.frozen
        head = (
            f"{self.model_type}: {total:,} parameters, {self.trainable:,} trainable, "
            f"{self.frozen:,} frozen"
        )
        table = [("module", "type", "trainable", "frozen", "state", "batch norm")]
        for r in self.rows:
            bn = ", ".join(f"{c} {p}" for p, c in sorted(r.bn.items())) or "-"
            table.append(
                (r.name or "(root)", r.type, f"{r.trainable:,}", f"{r.frozen:,}", r.state, bn)
            )
        widths = [max(len(row[i]) for row in table) for i in range(6)]
        right = {2, 3}
        lines = [head]
        for row in table:
            cells = [
                c.rjust(w) if i in right else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths))
            ]
            lines.append("  ".join(cells).rstrip())
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"TrainableReport({self.model_type}, trainable={self.trainable:,}, "
            f"frozen={self.frozen:,}, rows={len(self.rows)})"
        )


def trainable(model: nn.Module) -> TrainableReport:
    """What is trainable, per top-level module: parameter counts and BatchNorm policy.

    Counts are numbers of elements; a shared parameter is counted once, in the
    first module where it appears. The BatchNorm column counts the batch norms
    under each module by policy: ``eval`` (statistics fixed by :func:`freeze`),
    ``train`` (statistics update in train mode: ordinary, or frozen with
    ``bn="train"``) and ``frozen`` (a frozen batch norm module).

    Example:
        >>> import torchvision, surgery
        >>> m = torchvision.models.resnet18(weights=None)
        >>> _ = surgery.freeze_to(m, -1, split_at=["layer3", "fc"])
        >>> report = surgery.trainable(m)
        >>> report["layer1"].frozen, report["layer1"].bn, report["fc"].trainable
        (147968, {'eval': 4}, 513000)
        >>> print(report)
        ResNet: 11,689,512 parameters, 513,000 trainable, 11,176,512 frozen
        module   type               trainable     frozen  state      batch norm
        conv1    Conv2d                     0      9,408  frozen     -
        bn1      BatchNorm2d                0        128  frozen     1 eval
        relu     ReLU                       0          0  -          -
        maxpool  MaxPool2d                  0          0  -          -
        layer1   Sequential                 0    147,968  frozen     4 eval
        layer2   Sequential                 0    525,568  frozen     5 eval
        layer3   Sequential                 0  2,099,712  frozen     5 eval
        layer4   Sequential                 0  8,393,728  frozen     5 eval
        avgpool  AdaptiveAvgPool2d          0          0  -          -
        fc       Linear               513,000          0  trainable  -
    """
    check_model(model, "trainable")
    seen: set[int] = set()

    def row(
        name: str, module: nn.Module, params: Iterable[nn.Parameter], mods: Iterable[nn.Module]
    ) -> TrainableRow:
        t = f = 0
        for p in params:
            if id(p) in seen:
                continue
            seen.add(id(p))
            if p.requires_grad:
                t += p.numel()
            else:
                f += p.numel()
        counts: dict[str, int] = {}
        for m in mods:
            pol = bn_policy(m)
            if pol is not None:
                counts[pol] = counts.get(pol, 0) + 1
        return TrainableRow(name, type(module).__name__, t, f, counts)

    rows = []
    own = list(model.parameters(recurse=False))
    if own or not model._modules:
        rows.append(row("", model, own, [model] if not model._modules else []))
    for name, child in model.named_children():
        rows.append(row(name, child, child.parameters(), child.modules()))
    return TrainableReport(type(model).__name__, rows)
