"""The documentation runs: code blocks of docs/*.md, the CLI examples, and docstring examples.

- Every fenced ```python block of a page runs, in order, in one namespace per page,
  in a fresh temporary working directory, every page included. A block right after
  the HTML comment ``<!-- docs-test: skip-next -->`` (invisible on the rendered
  page) is shown but not run: an excerpt, or code that needs a process group. A
  block written as a doctest (``>>>`` prompts) is checked as one, output included.
- A ```text block right after a python block is what that block prints (stdout and
  stderr, as a terminal shows them): the printed output must match it, where ``...`` stands for any text (doctest's ELLIPSIS).
  A text block that shows an error (``surgery.ShapeMismatchError: ...``) means the
  block must raise that error. A block that is not Python but a signature
  (``f(a, *, b=None)``) is shown only.
- Every ``$ surgery ...`` line of a ```console block runs through the CLI's
  ``main`` after the page's python blocks (which may create the files it reads) and
  must exit 0 (1 for ``surgery diff`` of inputs that differ); a ```text block right
  after the console block must match what its commands print.
- Every public function and class of ``surgery.__all__`` (exceptions aside) has a
  docstring with a ``>>>`` example; ``pytest --doctest-modules`` runs them.
- docs/api.md covers every public name, and mkdocs.yml's nav lists every page.
"""

from __future__ import annotations

import contextlib
import doctest
import inspect
import io
import logging
import re
import shlex
import warnings
from pathlib import Path

import pytest

import surgery
from surgery import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.M | re.S,
)


SKIP_NEXT = "<!-- docs-test: skip-next -->"
TEXT_AFTER = re.compile(
    r"\s*(?P<indent>[ \t]*)```text[^\n]*\n(?P<body>.*?)^(?P=indent)```", re.M | re.S
)


def _dedent(body: str, indent: str) -> str:
    if not indent:
        return body
    return (
        "\n".join(
            line[len(indent) :] if line.startswith(indent) else line for line in body.splitlines()
        )
        + "\n"
    )


def _runnable(text: str, m: re.Match[str]) -> str | None:
    """The code of block ``m``, or None where it is shown only (skip-next, snippet include)."""
    if text[: m.start()].rstrip().endswith(SKIP_NEXT):
        return None
    body = _dedent(m.group("body"), m.group("indent"))
    if all(line.strip().startswith("--8<--") for line in body.splitlines() if line.strip()):
        return None  # a snippet include (a recipe's full source), run by the recipe itself
    return body


def text_after(text: str, end: int) -> str | None:
    """The body of a ```text block right after position ``end``, if there is one."""
    m = TEXT_AFTER.match(text, end)
    return _dedent(m.group("body"), m.group("indent")) if m else None


def blocks(text: str, langs: tuple[str, ...]) -> list[tuple[int, str, str | None]]:
    """``(line number, code, following text block)`` of the runnable blocks in ``langs``."""
    found = []
    for m in FENCE.finditer(text):
        if m.group("lang").lower() not in langs:
            continue
        body = _runnable(text, m)
        if body is None:
            continue
        found.append((text.count("\n", 0, m.start()) + 2, body, text_after(text, m.end())))
    return found


ERROR_LINE = re.compile(r"^(?:Traceback|(?:[\w.]+\.)?(?P<name>\w+(?:Error|Exception|Exit)):)", re.M)


def expected_error(shown: str | None) -> str | None:
    """The exception name a ```text block shows, if it shows one."""
    err = ERROR_LINE.search(shown) if shown else None
    if err is None:
        return None
    return err.group("name") or "Exception"


def python_blocks(text: str) -> list[tuple[int, str, str | None, str | None]]:
    """``(line, code, expected error name, expected output)`` for the python blocks to run."""
    out = []
    for lineno, code, shown in blocks(text, ("python", "pycon", "py")):
        error = expected_error(shown)
        out.append((lineno, code, error, None if error else shown))
    return out


def console_blocks(text: str) -> list[tuple[int, list[tuple[int, list[str]]], str | None]]:
    """``(line, [(line, argv after 'surgery')], expected output)`` of console blocks."""
    out = []
    for lineno, body, shown in blocks(text, ("console", "shell", "bash", "sh")):
        argvs = []
        for i, line in enumerate(body.splitlines()):
            line = line.strip()
            if line.startswith("$ surgery "):
                argvs.append((lineno + i, shlex.split(line[2:], comments=True)[1:]))
        if argvs:
            out.append((lineno, argvs, shown))
    return out


def commands(text: str) -> list[tuple[int, list[str]]]:
    """``$ surgery ...`` lines of console/shell blocks, as argv lists (after ``surgery``)."""
    return [c for _, argvs, _ in console_blocks(text) for c in argvs]


def check_printed(name: str, lineno: int, shown: str, printed: str) -> None:
    """``printed`` matches the ```text block ``shown`` (``...`` matches any text)."""
    want = "\n".join(line.rstrip() for line in shown.strip("\n").splitlines()) + "\n"
    got = "\n".join(line.rstrip() for line in printed.strip("\n").splitlines()) + "\n"
    if not doctest.OutputChecker().check_output(want, got, doctest.ELLIPSIS):
        pytest.fail(
            f"{name}: the block at line {lineno} printed\n{got}\nbut the page shows\n{want}",
            pytrace=False,
        )


def _rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


RUNNABLE = [p for p in PAGES if python_blocks(p.read_text()) or commands(p.read_text())]
# pages whose examples build several full-size models: CI's slow step runs them
SLOW_PAGES = {"composing.md", "freezing.md", "convert_between_zoos.md"}
RUNNABLE_PARAMS = [
    pytest.param(p, marks=pytest.mark.slow) if p.name in SLOW_PAGES else p for p in RUNNABLE
]


def test_docs_exist() -> None:
    names = {p.name for p in PAGES}
    for page in ("index.md", "getting-started.md", "cli.md", "api.md", "from-tutorials.md"):
        assert page in names, page
    assert len(RUNNABLE) >= 5


def _run_doctest(code: str, ns: dict, name: str, lineno: int) -> None:
    parser = doctest.DocTestParser()
    test = parser.get_doctest(code, ns, name, name, lineno)
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    report: list[str] = []
    runner.run(test, out=report.append, clear_globs=False)
    if runner.failures:
        pytest.fail(
            f"{name}: doctest block at line {lineno} failed:\n" + "".join(report), pytrace=False
        )


@pytest.mark.parametrize("page", RUNNABLE_PARAMS, ids=_rel)
def test_page_runs(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # files the examples write go to a scratch folder
    text = page.read_text()
    ns: dict = {"__name__": "__docs__"}
    # a page's logging.basicConfig works as in a reader's fresh interpreter: without
    # pytest's capture handlers on the root logger (put back afterwards)
    saved = logging.root.handlers[:], logging.root.level
    logging.root.handlers.clear()
    try:
        _run_page(page, text, ns, capsys)
    finally:
        for handler in logging.root.handlers:
            if handler not in saved[0]:
                handler.close()
        logging.root.handlers[:] = saved[0]
        logging.root.setLevel(saved[1])


class _Terminal(io.TextIOBase):
    """One stdout/stderr for the whole page (a logging handler made by one block keeps
    writing to it), whose text goes to the buffer of the block running now."""

    def __init__(self) -> None:
        self.block = io.StringIO()

    def write(self, text: str) -> int:
        return self.block.write(text)


def _run_page(page: Path, text: str, ns: dict, capsys: pytest.CaptureFixture[str]) -> None:
    name = _rel(page)
    terminal = _Terminal()
    with warnings.catch_warnings():
        # Examples may demonstrate a warning on purpose; they run as a reader runs them.
        warnings.simplefilter("default")
        for lineno, code, error, shown in python_blocks(text):
            if code.lstrip().startswith(">>>"):
                _run_doctest(code, ns, name, lineno)
                continue
            try:
                compiled = compile(code, f"{name}:{lineno}", "exec")
            except SyntaxError:
                if "*," in code:  # a signature shown as documentation, not code
                    continue
                raise
            printed = terminal.block = io.StringIO()
            try:
                # what a reader sees in the terminal: stdout and stderr (logged notes)
                with contextlib.redirect_stdout(terminal), contextlib.redirect_stderr(terminal):
                    exec(compiled, ns)
            except Exception as e:  # report which block failed, with the error
                if error is not None and error in {c.__name__ for c in type(e).__mro__}:
                    continue  # the page shows this error on purpose
                pytest.fail(
                    f"{name}: python block at line {lineno} raised {type(e).__name__}: {e}",
                    pytrace=False,
                )
            else:
                if error is not None:
                    pytest.fail(
                        f"{name}: python block at line {lineno} should raise {error} (the page shows it)",
                        pytrace=False,
                    )
                if shown is not None:
                    check_printed(name, lineno, shown, printed.getvalue())
        capsys.readouterr()
        for block_line, argvs, shown in console_blocks(text):
            printed = ""
            for lineno, argv in argvs:
                try:
                    rc = cli.main(argv)
                except SystemExit as e:  # argparse errors
                    rc = e.code if isinstance(e.code, int) else 2
                captured = capsys.readouterr()
                ok = (0, 1) if argv[:1] == ["diff"] else (0,)
                assert rc in ok, (
                    f"{name}:{lineno}: `surgery {shlex.join(argv)}` exited {rc}: {captured.err}"
                )
                printed += captured.out
            if shown is not None:
                check_printed(name, block_line, shown, printed)


def _public_objects() -> list[tuple[str, object]]:
    out = []
    for name in surgery.__all__:
        obj = getattr(surgery, name)
        if inspect.isclass(obj) and issubclass(obj, (BaseException, Warning)):
            continue  # the exception tree is documented once, in surgery._errors
        if inspect.isfunction(obj) or inspect.isclass(obj):
            out.append((name, obj))
    return out


@pytest.mark.parametrize("name, obj", _public_objects(), ids=[n for n, _ in _public_objects()])
def test_public_docstring_has_example(name: str, obj: object) -> None:
    doc = inspect.getdoc(obj) or ""
    assert doc.strip(), f"surgery.{name} has no docstring"
    assert ">>>" in doc, f"surgery.{name}'s docstring has no runnable example (a '>>>' line)"


def test_api_page_covers_every_public_name() -> None:
    text = (DOCS / "api.md").read_text()
    listed = set(re.findall(r"^::: surgery\.(\w+)", text, re.M))
    whole = re.search(r"^::: surgery\s*$", text, re.M) is not None
    missing = [n for n in surgery.__all__ if n not in listed]
    assert whole or not missing, f"docs/api.md lacks: {missing}"


def test_nav_lists_every_page() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    missing = [str(p.relative_to(DOCS)) for p in PAGES if str(p.relative_to(DOCS)) not in nav]
    assert not missing, f"pages missing from mkdocs.yml nav: {missing}"


def test_expected_errors_and_outputs_are_read_from_the_text_block() -> None:
    text = "```python\nf()\n```\n\n```text\nsurgery.ShapeMismatchError: compose: ...\n```\n```python\ng()\n```\n```text\n(1, 10)\n```\n"
    assert python_blocks(text) == [
        (2, "f()\n", "ShapeMismatchError", None),
        (9, "g()\n", None, "(1, 10)\n"),
    ]


def test_fence_parser() -> None:
    text = (
        "x\n<!-- docs-test: skip-next -->\n```python\nslow()\n```\n```python\na = 1\n```\n"
        "```console\n$ surgery tree torchvision:resnet18 --depth 1\n```\n"
    )
    assert blocks(text, ("python",)) == [(7, "a = 1\n", None)]
    assert commands(text) == [(10, ["tree", "torchvision:resnet18", "--depth", "1"])]


def test_printed_output_comparison() -> None:
    check_printed("page", 1, "a\n  ...\nTotal: 3\n", "a\n  b  \n  c\nTotal: 3\n")
    with pytest.raises(pytest.fail.Exception, match="printed"):
        check_printed("page", 1, "Total: 4\n", "Total: 3\n")
