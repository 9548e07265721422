"""A griffe extension for the API reference: ``Example:`` sections render as code.

Google-style parsing in griffe reads ``Examples:`` as an examples section (``>>>``
lines become highlighted code) but the singular ``Example:`` as an admonition whose
body is rendered as Markdown, where doctest output such as ``[30, 30, 2]`` looks like
a link. The package's docstrings say ``Example:``; this renames the heading while the
docs are built (the source is not changed).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_HEADING = re.compile(r"^(\s*)Example:[ \t]*$", re.M)


class ExampleSections(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if obj.docstring is not None and "Example:" in obj.docstring.value:
            obj.docstring.value = _HEADING.sub(r"\1Examples:", obj.docstring.value)
