"""The documentation runs: code blocks of docs/*.md, the CLI examples, and docstring examples.

- Every fenced ```python block of a page runs, in order, in one namespace per page,
  in a fresh temporary working directory. A block whose first line is ``# skip`` is
  shown but not run (slow or illustrative code); a page holding the comment
  ``<!-- docs-test: skip -->`` is not run at all. A block written as a doctest
  (``>>>`` prompts) is checked as one, output included. A block followed by a
  ```text block that shows an error (``surgery.ShapeMismatchError: ...``) must raise
  that error. A block that is not Python but a signature (``f(a, *, b=None)``) is
  shown only.
- Every ``$ surgery ...`` line of a ```console block runs through the CLI's
  ``main`` after the page's python blocks (which may create the files it reads) and
  must exit 0.
- Every public function and class of ``surgery.__all__`` (exceptions aside) has a
  docstring with a ``>>>`` example; ``pytest --doctest-modules`` runs them.
- docs/api.md covers every public name, and mkdocs.yml's nav lists every page.
"""

from __future__ import annotations

import doctest
import inspect
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


def blocks(text: str, langs: tuple[str, ...]) -> list[tuple[int, str]]:
    """``(line number, code)`` of the fenced blocks in ``langs``, ``# skip`` blocks excluded."""
    found = []
    for m in FENCE.finditer(text):
        if m.group("lang").lower() not in langs:
            continue
        body = m.group("body")
        indent = m.group("indent")
        if indent:
            body = "\n".join(
                line[len(indent) :] if line.startswith(indent) else line
                for line in body.splitlines()
            )
        first = body.strip().splitlines()[0].strip() if body.strip() else ""
        if first.lower().startswith("# skip"):
            continue
        if all(line.strip().startswith("--8<--") for line in body.splitlines() if line.strip()):
            continue  # a snippet include (a recipe's full source), run by the recipe itself
        found.append((text.count("\n", 0, m.start()) + 2, body))
    return found


PAGE_SKIP = "<!-- docs-test: skip -->"
# Pages whose python blocks illustrate setups a test cannot build (multi-GB checkpoints,
# process groups); prefer marking such blocks with '# skip' in the page itself.
PAGES_NOT_RUN = {"scale.md": "illustrative: multi-GB checkpoints and FSDP process groups"}
ERROR_LINE = re.compile(r"^(?:Traceback|(?:[\w.]+\.)?(?P<name>\w+(?:Error|Exception|Exit)):)", re.M)


def expected_error(text: str, end: int) -> str | None:
    """The exception name a ```text block right after position ``end`` shows, if any."""
    m = re.compile(r"\s*```text[^\n]*\n(?P<body>.*?)^```", re.M | re.S).match(text, end)
    if m is None:
        return None
    err = ERROR_LINE.search(m.group("body"))
    if err is None:
        return None
    return err.group("name") or "Exception"


def python_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """``(line, code, expected error name)`` for the python blocks to run."""
    out = []
    for m in FENCE.finditer(text):
        if m.group("lang").lower() not in ("python", "pycon", "py"):
            continue
        found = blocks(m.group(0), ("python", "pycon", "py"))
        if not found:
            continue  # a '# skip' block
        _, code = found[0]
        out.append((text.count("\n", 0, m.start()) + 2, code, expected_error(text, m.end())))
    return out


def commands(text: str) -> list[tuple[int, list[str]]]:
    """``$ surgery ...`` lines of console/shell blocks, as argv lists (after ``surgery``)."""
    out = []
    for lineno, body in blocks(text, ("console", "shell", "bash", "sh")):
        for i, line in enumerate(body.splitlines()):
            line = line.strip()
            if line.startswith("$ surgery "):
                out.append((lineno + i, shlex.split(line[2:], comments=True)[1:]))
    return out


def _rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


RUNNABLE = [
    p
    for p in PAGES
    if PAGE_SKIP not in p.read_text()
    and p.name not in PAGES_NOT_RUN
    and (python_blocks(p.read_text()) or commands(p.read_text()))
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


@pytest.mark.parametrize("page", RUNNABLE, ids=_rel)
def test_page_runs(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # files the examples write go to a scratch folder
    text = page.read_text()
    ns: dict = {"__name__": "__docs__"}
    name = _rel(page)
    with warnings.catch_warnings():
        # Examples may demonstrate a warning on purpose; they run as a reader runs them.
        warnings.simplefilter("default")
        for lineno, code, error in python_blocks(text):
            if code.lstrip().startswith(">>>"):
                _run_doctest(code, ns, name, lineno)
                continue
            try:
                compiled = compile(code, f"{name}:{lineno}", "exec")
            except SyntaxError:
                if "*," in code:  # a signature shown as documentation, not code
                    continue
                raise
            try:
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
        for lineno, argv in commands(text):
            try:
                rc = cli.main(argv)
            except SystemExit as e:  # argparse errors
                rc = e.code if isinstance(e.code, int) else 2
            err = capsys.readouterr().err
            assert rc == 0, f"{name}:{lineno}: `surgery {shlex.join(argv)}` exited {rc}: {err}"


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


def test_expected_errors_are_read_from_the_text_block() -> None:
    text = "```python\nf()\n```\n\n```text\nsurgery.ShapeMismatchError: compose: ...\n```\n```python\ng()\n```\n```text\n(1, 10)\n```\n"
    assert python_blocks(text) == [(2, "f()\n", "ShapeMismatchError"), (9, "g()\n", None)]


def test_fence_parser() -> None:
    text = "x\n```python\n# skip\nslow()\n```\n```python\na = 1\n```\n```console\n$ surgery tree torchvision:resnet18 --depth 1\n```\n"
    assert blocks(text, ("python",)) == [(7, "a = 1\n")]
    assert commands(text) == [(10, ["tree", "torchvision:resnet18", "--depth", "1"])]
