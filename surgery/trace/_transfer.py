"""``surgery.check_transfer``: prove a weight transfer by comparing outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._boundary import operation, user_call
from .._errors import ArgumentError, VerificationError
from ..paths._resolve import check_model
from ._meta import eval_mode

__all__ = ["TransferReport", "check_transfer"]


@dataclass
class OutputDiff:
    """The largest differences of one output (``name`` is its position or key)."""

    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    ok: bool


@dataclass
class TransferReport:
    """What :func:`check_transfer` measured: one row per output tensor.

    Attributes:
        outputs: per output, its name (``"output"``, ``"[0]"``, ``"['logits']"``),
            shape, largest absolute difference, largest relative difference
            (``|a - b| / |a|`` where ``|a| > 0``) and whether it is within tolerance.
        rtol: the relative tolerance used.
        atol: the absolute tolerance used.

    Example:
        >>> import torch, torchvision, surgery
        >>> a = torchvision.models.resnet18(weights=None)
        >>> b = torchvision.models.resnet18(weights=None)
        >>> _ = surgery.load_partial(a, into=b)
        >>> r = surgery.check_transfer(a, b, torch.randn(1, 3, 64, 64))
        >>> r.ok, r.max_abs
        (True, 0.0)
    """

    outputs: list[OutputDiff] = field(default_factory=list)
    rtol: float = 1e-4
    atol: float = 1e-5

    @property
    def ok(self) -> bool:
        """True when every output is within tolerance."""
        return all(o.ok for o in self.outputs)

    @property
    def max_abs(self) -> float:
        """The largest absolute difference over all outputs."""
        return max((o.max_abs for o in self.outputs), default=0.0)

    @property
    def max_rel(self) -> float:
        """The largest relative difference over all outputs."""
        return max((o.max_rel for o in self.outputs), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {
            "ok": self.ok,
            "rtol": self.rtol,
            "atol": self.atol,
            "outputs": [
                {
                    "name": o.name,
                    "shape": list(o.shape),
                    "max_abs": o.max_abs,
                    "max_rel": o.max_rel,
                    "ok": o.ok,
                }
                for o in self.outputs
            ],
        }

    def __str__(self) -> str:
        verdict = "outputs agree" if self.ok else "outputs DIFFER"
        lines = [f"TransferReport: {verdict} (rtol={self.rtol:g}, atol={self.atol:g})"]
        width = max((len(o.name) for o in self.outputs), default=0)
        for o in self.outputs:
            mark = "ok" if o.ok else "FAIL"
            lines.append(
                f"  {o.name.ljust(width)}  {o.shape!s:<18} max abs {o.max_abs:.3g}  "
                f"max rel {o.max_rel:.3g}  {mark}"
            )
        return "\n".join(lines)


def _flatten(value: Any, name: str, out: list[tuple[str, torch.Tensor]]) -> None:
    if isinstance(value, torch.Tensor):
        out.append((name, value))
    elif isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{name}[{k!r}]" if name != "output" else f"[{k!r}]", out)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _flatten(v, f"{name}[{i}]" if name != "output" else f"[{i}]", out)
    elif hasattr(value, "to_tuple"):  # HF ModelOutput
        _flatten(dict(value.items()), name, out)


def _run(model: nn.Module, inputs: tuple[Any, ...], what: str) -> list[tuple[str, torch.Tensor]]:
    with eval_mode(model), torch.no_grad():
        result = user_call(model, *inputs, what=what, error=VerificationError)
    out: list[tuple[str, torch.Tensor]] = []
    _flatten(result, "output", out)
    return out


def _compare(name: str, a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> OutputDiff:
    if a.shape != b.shape:
        raise VerificationError(
            f"output {name}: the reference gives shape {tuple(a.shape)}, the model "
            f"{tuple(b.shape)}; they are not the same network (or not the same head)"
        )
    if a.numel() == 0:
        return OutputDiff(name, tuple(a.shape), 0.0, 0.0, True)
    x = a.detach().to("cpu", torch.float64)
    y = b.detach().to("cpu", torch.float64)
    diff = (x - y).abs()
    nonzero = x.abs() > 0
    rel = (diff[nonzero] / x.abs()[nonzero]).max().item() if nonzero.any() else 0.0
    ok = bool(torch.all(diff <= atol + rtol * x.abs()))
    return OutputDiff(name, tuple(a.shape), float(diff.max().item()), float(rel), ok)


def check_transfer(
    reference: nn.Module,
    model: nn.Module,
    example_input: Any,
    *,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> TransferReport:
    """Prove that ``model`` computes what ``reference`` computes, output by output.

    Both run once in eval mode on the same input under ``torch.no_grad()``; every
    submodule's train/eval mode is restored afterwards and nothing else is
    touched. An output passes when ``|ref - out| <= atol + rtol * |ref|``
    everywhere (``torch.allclose``'s rule). Use it after
    ``load_partial(..., rename="auto")`` to prove a mapping.

    Args:
        reference: the model whose weights were transferred.
        model: the model that received them.
        example_input: a tensor, or a tuple of positional inputs.
        rtol: relative tolerance.
        atol: absolute tolerance.

    Returns:
        A :class:`TransferReport` (per output: the largest absolute and relative
        differences).

    Raises:
        VerificationError: an output exceeds the tolerances, the outputs differ in
            number or shape, or a forward raised.
        ArgumentError: a model is not an ``nn.Module`` or a tolerance is negative.

    Example:
        >>> import torch, torchvision, surgery
        >>> a = torchvision.models.resnet18(weights=None)
        >>> b = torchvision.models.resnet18(weights=None)
        >>> try:
        ...     surgery.check_transfer(a, b, torch.randn(1, 3, 64, 64))
        ... except surgery.VerificationError as e:
        ...     print(str(e).splitlines()[0][:60])
        check_transfer(ResNet): outputs differ: output (1, 1000) max
        >>> _ = surgery.load_partial(a, into=b)
        >>> print(surgery.check_transfer(a, b, torch.randn(1, 3, 64, 64)))  # doctest: +ELLIPSIS
        TransferReport: outputs agree (rtol=0.0001, atol=1e-05)
          output  (1, 1000) ... max abs 0  max rel 0  ok
    """
    with operation("check_transfer", model=model):
        check_model(reference, "check_transfer")
        check_model(model, "check_transfer")
        for name, tol in (("rtol", rtol), ("atol", atol)):
            if isinstance(tol, bool) or not isinstance(tol, (int, float)) or tol < 0:
                raise ArgumentError(f"{name} must be a number >= 0, got {tol!r}")
        inputs = example_input if isinstance(example_input, tuple) else (example_input,)
        ref = _run(reference, inputs, "the reference's forward")
        out = _run(model, inputs, "the model's forward")
        if len(ref) != len(out):
            raise VerificationError(
                f"the reference returns {len(ref)} tensor(s), the model {len(out)}"
            )
        report = TransferReport(rtol=float(rtol), atol=float(atol))
        for (name, a), (_n, b) in zip(ref, out):
            report.outputs.append(_compare(name, a, b, rtol, atol))
        bad = [o for o in report.outputs if not o.ok]
        if bad:
            rows = "".join(
                f"\n    output {o.name} {o.shape}: max abs {o.max_abs:.3g}, max rel {o.max_rel:.3g}"
                for o in bad
            )
            raise VerificationError(
                f"outputs differ: output {bad[0].shape} max abs {bad[0].max_abs:.3g} exceeds "
                f"atol={atol:g} + rtol={rtol:g} * |reference| (the weights were not all "
                f"transferred, or were mapped to the wrong tensors):{rows}"
            )
        return report
