"""The path grammar: tables of valid and invalid paths, round trips, patterns."""

from __future__ import annotations

import contextlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

import surgery
from surgery import Path, PathSyntaxError, SurgeryError, parse_path
from surgery.paths._grammar import Slice, compile_pattern

VALID = [
    ("", (), ""),
    ("layer3", ("layer3",), "layer3"),
    ("layer3.0.conv1", ("layer3", 0, "conv1"), "layer3.0.conv1"),
    ("features.6", ("features", 6), "features.6"),
    ("features[6]", ("features", 6), "features.6"),
    ("features[-1]", ("features", -1), "features[-1]"),
    ("features.-1", ("features", -1), "features[-1]"),
    ("features[7:14]", ("features", Slice(7, 14, None)), "features[7:14]"),
    ("blocks[:-1]", ("blocks", Slice(None, -1, None)), "blocks[:-1]"),
    ("x[::2]", ("x", Slice(None, None, 2)), "x[::2]"),
    ("x[1::-1]", ("x", Slice(1, None, -1)), "x[1::-1]"),
    ("x[:]", ("x", Slice(None, None, None)), "x[:]"),
    ("x[ 2 : 5 ]", ("x", Slice(2, 5, None)), "x[2:5]"),
    ("[0]", (0,), "0"),
    ("0.1", (0, 1), "0.1"),
    ("[2:4].0", (Slice(2, 4, None), 0), "[2:4].0"),
    ("features[7:14][0]", ("features", Slice(7, 14, None), 0), "features[7:14].0"),
    ("encoder.layers.encoder_layer_0.mlp", ("encoder", "layers", "encoder_layer_0", "mlp"), None),
    ("AuxLogits.fc", ("AuxLogits", "fc"), None),
    ("blocks.0a", ("blocks", "0a"), None),
    ("a-b.c", ("a-b", "c"), None),
]


@pytest.mark.parametrize(("text", "segments", "canonical"), VALID)
def test_valid_paths(text: str, segments: tuple, canonical: str | None) -> None:
    p = parse_path(text)
    assert p.segments == segments
    assert str(p) == (canonical if canonical is not None else text)
    assert parse_path(str(p)) == p
    assert hash(parse_path(str(p))) == hash(p)


INVALID = [
    ("layer3..0", 7, "empty segment"),
    (".layer3", 0, "cannot start with '.'"),
    ("layer3.", 6, "cannot end with '.'"),
    ("features[7:14", 8, "unclosed '\\['"),
    ("features[]", 9, "empty brackets"),
    ("features[a]", 9, "expected an integer index"),
    ("features[1:b]", 11, "expected an integer slice bound"),
    ("features[1:2:3:4]", 14, "at most two ':'"),
    ("features[::0]", 11, "step cannot be zero"),
    ("features[[1]]", 9, "nested"),
    ("layer*", 5, "only allowed in patterns"),
    ("layer 3", 5, "expected '.' or '\\['"),
    ("a]", 1, "expected '.' or '\\['"),
    ("]", 0, "unmatched"),
    (" layer3", 0, "unexpected character"),
    ("features[1]x", 11, "expected '.' or '\\['"),
]


@pytest.mark.parametrize(("text", "position", "message"), INVALID)
def test_invalid_paths(text: str, position: int, message: str) -> None:
    with pytest.raises(PathSyntaxError, match=message) as info:
        parse_path(text)
    err = info.value
    assert err.position == position
    assert err.text == text
    # the message echoes the whole path with a caret under the bad character
    lines = str(err).splitlines()
    assert lines[1].strip() == repr(text)
    caret_line = lines[2]
    assert caret_line.index("^") == lines[1].index("'") + 1 + position


def test_syntax_error_is_a_surgery_error_and_value_error() -> None:
    with pytest.raises(SurgeryError):
        parse_path("a..b")
    with pytest.raises(ValueError):
        parse_path("a..b")


def test_non_string_path() -> None:
    with pytest.raises(PathSyntaxError, match="must be a str"):
        parse_path(3)  # type: ignore[arg-type]


def test_path_is_immutable_hashable_ordered() -> None:
    p = parse_path("layer3.0")
    with pytest.raises(AttributeError):
        p.segments = ()  # type: ignore[misc]
    assert {p: 1}[parse_path("layer3[0]")] == 1
    ordered = sorted(
        parse_path(t) for t in ["layer4", "layer3.1", "", "layer3.0", "features[1:2]", "features.1"]
    )
    assert [str(p) for p in ordered] == [
        "",
        "features.1",
        "features[1:2]",
        "layer3.0",
        "layer3.1",
        "layer4",
    ]
    assert parse_path("") == Path()
    assert parse_path("").is_root
    assert parse_path("a.b").parent == parse_path("a")
    assert parse_path("a.b").last == "b"
    assert parse_path("a").child(3) == parse_path("a.3")
    assert repr(parse_path("a[1:2]")) == "Path('a[1:2]')"


# -- hypothesis --------------------------------------------------------------

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
ints = st.integers(min_value=-50, max_value=50)
opt_ints = st.none() | ints
slices = st.builds(Slice, opt_ints, opt_ints, st.none() | ints.filter(lambda v: v != 0))
segments = st.one_of(names, ints, slices)


@given(st.lists(segments, max_size=6))
def test_round_trip(segs: list) -> None:
    p = Path(tuple(segs))
    assert parse_path(str(p)) == p


@given(st.text(max_size=30))
def test_arbitrary_text_parses_or_raises_surgery_error(text: str) -> None:
    try:
        p = parse_path(text)
    except SurgeryError:
        return
    assert parse_path(str(p)) == p


@given(st.text(alphabet="ab.*?[]:-0123", max_size=20))
def test_arbitrary_patterns_compile_or_raise_surgery_error(text: str) -> None:
    with contextlib.suppress(SurgeryError):
        compile_pattern(text)


# -- patterns ----------------------------------------------------------------

PATTERNS = [
    ("layer*.*.bn?", "layer1.0.bn1", True),
    ("layer*.*.bn?", "layer1.0.bn12", False),
    ("layer*.*.bn?", "layer1.bn1", False),
    ("**.downsample", "downsample", True),
    ("**.downsample", "layer2.0.downsample", True),
    ("**.downsample", "layer2.0.downsample.0", False),
    ("**", "a", True),
    ("**", "a.b.c", True),
    ("layer1.**", "layer1", False),
    ("layer1.**", "layer1.0.conv1", True),
    ("a.**.b", "a.b", True),
    ("a.**.b", "a.x.y.b", True),
    ("a.**.b", "a.x.y.c", False),
    ("features[3]", "features.3", True),
    ("features.*", "features.3", True),
    ("re:layer[12]\\..*", "layer1.0", True),
    ("re:layer[12]\\..*", "layer3.0", False),
    ("re:layer", "layer1", False),  # fullmatch
    ("layer3", "layer3", True),
    ("layer3", "layer3.0", False),
    ("a.b", "axb", False),  # dots are literal
]


@pytest.mark.parametrize(("pattern", "name", "expected"), PATTERNS)
def test_patterns(pattern: str, name: str, expected: bool) -> None:
    assert compile_pattern(pattern).matches(name) is expected


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("re:layer(", "bad regex"),
        ("a**.b", "'\\*\\*' must be a whole segment"),
        ("a..*", "empty segment"),
        ("features[1:3].*", "slices and negative indices are not allowed"),
    ],
)
def test_invalid_patterns(pattern: str, message: str) -> None:
    with pytest.raises(PathSyntaxError, match=message):
        compile_pattern(pattern)


def test_public_parse_path_is_the_module_function() -> None:
    assert surgery.parse_path is parse_path
    assert re.fullmatch(r"\d+\.\d+\.\d+", surgery.__version__)
