"""The prompt grammar: a table of accepted prompts, a table of rejected ones, round trips."""

from __future__ import annotations

import re

import pytest

from engine.errors import PromptError
from engine.prompts import (
    TextPrompt,
    format_prompts,
    parse_prompt,
    parse_weighted_path,
)

P = TextPrompt

ACCEPTED = [
    ("a forest rendered in low poly", [P("a forest rendered in low poly")]),
    ("a watercolor painting + a baseball game", [P("a watercolor painting"), P("a baseball game")]),
    ("a | b", [P("a"), P("b")]),
    ("a cat:2", [P("a cat", 2.0)]),
    ("a cat:-1", [P("a cat", -1.0)]),
    ("a cat : 0.5", [P("a cat", 0.5)]),
    ("a cat:1e-2", [P("a cat", 0.01)]),
    ("a cat:+3", [P("a cat:"), P("3")]),  # '+' always separates
    ("3 :2", [P("3", 2.0)]),
    ("https://x.y :2", [P("https://x.y", 2.0)]),
    ("12:30:45:1", [P("12:30:45", 1.0)]),
    ("a cat:2 + a dog:-0.5", [P("a cat", 2.0), P("a dog", -0.5)]),
    # colons that are not weights stay text
    ("https://example.com:8080", [P("https://example.com:8080")]),
    ("see http://example.com:80 at night", [P("see http://example.com:80 at night")]),
    ("3:4", [P("3:4")]),
    ("a poster, ratio 16:9", [P("a poster, ratio 16:9")]),
    ("ratio 16:9 poster", [P("ratio 16:9 poster")]),
    ("the clock shows 12:30", [P("the clock shows 12:30")]),
    ("C:\\", [P("C:\\")]),
    ("note: a cat", [P("note: a cat")]),
    ("a cat:", [P("a cat:")]),
    ("a cat:1.5.2", [P("a cat:1.5.2")]),
    # the explicit-weight escape keeps a colon-ending text as text
    ("www.example.com:8080:1", [P("www.example.com:8080", 1.0)]),
    ("16:9:2", [P("16:9", 2.0)]),
    # whitespace is normalised
    ("  a\n\tcat  +  a   dog ", [P("a cat"), P("a dog")]),
]


@pytest.mark.parametrize(("prompt", "expected"), ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_parse_prompt_accepts(prompt: str, expected: list[TextPrompt]) -> None:
    assert parse_prompt(prompt) == expected


REJECTED = [
    ("", "empty"),
    ("   ", "empty"),
    ("a +", "part 2 of the prompt is empty"),
    ("+", "part 1 of the prompt is empty"),
    ("a ++ b", "part 2 of the prompt is empty"),
    (":2", "only a weight"),
    ("a + :2", "only a weight"),
    ("a cat:inf", "finite"),
    ("a cat:-inf", "finite"),
    ("a cat:nan", "finite"),
    ("a cat:1e400", "finite"),
    ("a cat:0", "no effect"),
    ("a cat:1000", "between -100 and 100"),
    ("www.example.com:8080", "explicit weight"),
    ("a:1 + b:-1", "add up to 0 (they cancel out), too little to guide the image"),
    ("castle:1e-12", "add up to only 1e-12, too little to guide the image; the total must be "
                     "at least 0.01 (or -0.01 or less, to steer away)"),
    ("a:0.5 + b:-0.495", "add up to only 0.005"),
    ("+".join(["x"] * 9), "9 parts; the limit is 8"),
    ("x" * 501, "501 characters long; the limit is 500"),
]


@pytest.mark.parametrize(("prompt", "message"), REJECTED, ids=[c[0][:20] for c in REJECTED])
def test_parse_prompt_rejects_with_clear_message(prompt: str, message: str) -> None:
    with pytest.raises(PromptError, match=re.escape(message)):
        parse_prompt(prompt)


def test_parse_prompt_limits_are_configurable() -> None:
    with pytest.raises(PromptError, match="limit is 2"):
        parse_prompt("a + b + c", max_parts=2)
    with pytest.raises(PromptError, match="limit is 5"):
        parse_prompt("abcdef", max_chars=5)


@pytest.mark.parametrize("prompt", [case[0] for case in ACCEPTED])
def test_format_prompts_round_trips(prompt: str) -> None:
    parsed = parse_prompt(prompt)
    assert parse_prompt(format_prompts(parsed)) == parsed


def test_format_prompts_writes_weights_only_where_needed() -> None:
    assert format_prompts([P("a cat"), P("a dog", -0.5)]) == "a cat + a dog:-0.5"
    assert format_prompts([P("3:4")]) == "3:4"
    assert format_prompts([P("x.com:8080")]) == "x.com:8080:1"
    assert format_prompts([P("3", 2.0)]) == "3 :2"
    assert format_prompts([P("https://x.y", 2.0)]) == "https://x.y :2"


@pytest.mark.parametrize(
    "prompt",
    [P("3", 2.0), P("16:9", 0.25), P("https://x.y:8080", -1.0), P("12:30:45"), P("a", 1 / 3)],
)
def test_format_prompts_round_trips_constructed_prompts(prompt: TextPrompt) -> None:
    assert parse_prompt(format_prompts([prompt])) == [prompt]


def test_format_prompts_refuses_text_the_grammar_cannot_hold() -> None:
    with pytest.raises(PromptError, match="cannot be written"):
        format_prompts([P("C++ logo")])


def test_text_prompt_is_frozen() -> None:
    with pytest.raises(AttributeError):
        P("a").text = "b"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("photo.png", ("photo.png", 1.0)),
        ("photo.png:0.5", ("photo.png", 0.5)),
        ("C:\\pictures\\cat.png", ("C:\\pictures\\cat.png", 1.0)),
        ("C:\\pictures\\cat.png:-1", ("C:\\pictures\\cat.png", -1.0)),
    ],
)
def test_parse_weighted_path(spec: str, expected: tuple[str, float]) -> None:
    assert parse_weighted_path(spec) == expected


def test_prompts_module_imports_no_heavy_packages() -> None:
    import subprocess
    import sys

    code = "import sys, engine.prompts; print(sorted(m for m in ('torch','PIL','numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
