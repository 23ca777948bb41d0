"""The prompt grammar: `a + b`, `a | b`, `text:weight`.

Stdlib only: the bot imports this module to validate a prompt before it queues a job, so a
bad prompt is answered at once and costs nothing.

Grammar
-------
A prompt is one or more *parts* separated by ``+`` or ``|``. Each part is text, optionally
followed by a weight: ``a watercolor painting:2 + a baseball game:-0.5``. The losses of the
parts are added, each multiplied by its weight; a negative weight steers the image away
from the text.

Colons are common in ordinary text (URLs, ratios, times, Windows paths), so a trailing
``:<number>`` is read as a weight only when *all* of these hold:

1. what follows the last colon is a plain decimal number (``2``, ``-1``, ``0.5``, ``1e-2``),
   or ``inf``/``nan`` (which are then rejected, rather than silently becoming text);
2. the text before the colon is not empty (``:2`` alone is rejected: a weight needs text);
3. the colon is separated from the text by a space (``a cat :2``), or
   - the character right before the colon is not a digit (``3:4``, ``16:9``, ``at 12:30``
     stay text: they read as ratios and times, not weights), and
   - the last word before the colon does not contain ``://`` (``https://x.y:8080`` stays
     text: that is a port);
   except that a text which itself ends in ``:<digits>`` takes a weight after it
   (``16:9:2`` is the text ``16:9`` with weight 2).

Any other colon is part of the text. To keep a colon-ending text as text, end the part with
an explicit weight: ``www.example.com:8080:1`` is the text ``www.example.com:8080`` with
weight 1 (and a time with seconds, ``12:30:45``, needs the same: ``12:30:45:1``).
`format_prompts` uses these forms, so ``parse_prompt(format_prompts(p)) == p`` for every
list `parse_prompt` returns.

Weights must be finite, non-zero and within ``[-MAX_WEIGHT, MAX_WEIGHT]``, and the weights
of a prompt must add up to at least ``MIN_TOTAL_WEIGHT`` either side of zero: a total near
zero leaves the prompts' pull negligible next to the penalty that keeps the latent small
(weight 0.1), so the penalty, not the prompt, would shape the image.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from engine.errors import PromptError

MAX_PARTS = 8
MAX_CHARS = 500
MAX_WEIGHT = 100.0
#: The smallest size the sum of a prompt's weights may have (see the module doc).
MIN_TOTAL_WEIGHT = 0.01

_SEPARATORS = re.compile(r"[+|]")
# A plain decimal number, or the non-finite spellings float() accepts (so they can be refused).
_NUMBER = re.compile(
    r"^[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf|infinity|nan)$", re.IGNORECASE
)
_WHITESPACE = re.compile(r"\s+")
_ENDS_WITH_COLON_DIGITS = re.compile(r":\d+$")


@dataclass(frozen=True)
class TextPrompt:
    """One part of a prompt: a text and the weight of its loss (negative steers away)."""

    text: str
    weight: float = 1.0


@dataclass(frozen=True)
class ImagePrompt:
    """An image the result should look like (or, with a negative weight, unlike).

    `image` is a PIL image; typed loosely because this module stays stdlib-only.
    """

    image: Any
    weight: float = 1.0


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def split_weight(part: str) -> tuple[str, str | None]:
    """Split ``text:weight`` into ``(text, weight_string)`` by the rules in the module doc.

    Returns ``(part, None)`` when the part carries no weight. Does not validate the number.
    """
    head, colon, tail = part.rpartition(":")
    if not colon:
        return part, None
    candidate = tail.strip()
    if not _NUMBER.match(candidate):
        return part, None
    if not head or head[-1].isspace() or _ENDS_WITH_COLON_DIGITS.search(head):
        return head, candidate  # "a cat :2", "16:9:2"; an empty head is refused by the caller
    if head[-1].isdigit():
        return part, None  # 3:4, 16:9, 12:30
    if "://" in head.split()[-1]:
        return part, None  # https://host:8080
    return head, candidate


def _parse_weight(text: str, raw: str, max_weight: float) -> float:
    label = f"the weight of '{_short(text)}'"
    weight = float(raw)
    if not math.isfinite(weight):
        raise PromptError(f"{label} is {raw}; weights must be finite numbers like 2 or -0.5")
    if weight == 0:
        raise PromptError(f"{label} is 0, which has no effect; remove the part or give it a non-zero weight")
    if abs(weight) > max_weight:
        raise PromptError(
            f"{label} is {raw}; weights must be between -{max_weight:g} and {max_weight:g}"
            " (to keep a colon in the text, end it with an explicit weight such as ':1')"
        )
    return weight


def _parse_part(raw: str, index: int, max_weight: float) -> TextPrompt:
    head, weight_raw = split_weight(raw)
    text = _WHITESPACE.sub(" ", head).strip()
    if not text:
        if weight_raw is not None:
            raise PromptError(f"part {index} of the prompt is only a weight (':{weight_raw}'); put text before it")
        raise PromptError(f"part {index} of the prompt is empty; remove the extra '+' or '|' or write text there")
    weight = 1.0 if weight_raw is None else _parse_weight(text, weight_raw, max_weight)
    return TextPrompt(text, weight)


def parse_prompt(
    prompt: str,
    *,
    max_parts: int = MAX_PARTS,
    max_chars: int = MAX_CHARS,
    max_weight: float = MAX_WEIGHT,
) -> list[TextPrompt]:
    """Parse a user's prompt into weighted parts, or raise `PromptError` saying how to fix it.

    Whitespace runs (including newlines) collapse to one space, so a prompt typed over
    several lines means the same as on one.
    """
    if not isinstance(prompt, str):
        raise PromptError("the prompt must be text")
    if len(prompt) > max_chars:
        raise PromptError(f"the prompt is {len(prompt)} characters long; the limit is {max_chars}")
    if not prompt.strip():
        raise PromptError("the prompt is empty; describe the image you want, e.g. 'a forest rendered in low poly'")
    raw_parts = _SEPARATORS.split(prompt)
    if len(raw_parts) > max_parts:
        raise PromptError(
            f"the prompt has {len(raw_parts)} parts; the limit is {max_parts} (parts are separated by '+' or '|')"
        )
    parts = [_parse_part(raw, index, max_weight) for index, raw in enumerate(raw_parts, start=1)]
    total = math.fsum(p.weight for p in parts)
    if abs(total) < MIN_TOTAL_WEIGHT:
        # Weights that cancel (1 and -1; or 0.1, 0.2 and -0.3, which leave a rounding error)
        # are told apart from weights that are all tiny (castle:1e-12).
        cancel = abs(total) <= 1e-9 * math.fsum(abs(p.weight) for p in parts)
        sum_is = "add up to 0 (they cancel out)" if cancel else f"add up to only {total:.3g}"
        raise PromptError(
            f"the weights of the prompt {sum_is}, too little to guide the image; the total must be "
            f"at least {MIN_TOTAL_WEIGHT:g} (or -{MIN_TOTAL_WEIGHT:g} or less, to steer away); "
            "make a weight larger"
        )
    return parts


def _format_weight(weight: float) -> str:
    short = f"{weight:g}"
    return short if float(short) == weight else repr(float(weight))


def format_prompts(prompts: list[TextPrompt]) -> str:
    """Write prompts back in the grammar, so that `parse_prompt` gives the same list back.

    Raises `PromptError` for a text that the grammar cannot express (one containing ``+`` or
    ``|``, or empty).
    """
    pieces: list[str] = []
    for prompt in prompts:
        text = prompt.text
        if not text.strip() or _SEPARATORS.search(text):
            raise PromptError(f"'{_short(text)}' cannot be written as a prompt part (empty, or contains '+' or '|')")
        weight = _format_weight(prompt.weight)
        candidates = [text] if prompt.weight == 1.0 else []
        candidates += [f"{text}:{weight}", f"{text} :{weight}"]
        for piece in candidates:
            try:
                if _parse_part(piece, 1, MAX_WEIGHT) == prompt:
                    pieces.append(piece)
                    break
            except PromptError:
                continue
        else:
            raise PromptError(f"'{_short(text)}' cannot be written as a prompt part")
    return " + ".join(pieces)


def parse_weighted_path(spec: str, *, max_weight: float = MAX_WEIGHT) -> tuple[str, float]:
    """Parse ``PATH[:weight]`` (e.g. ``--image-prompt photo.png:0.5``) by the same colon rules.

    ``C:\\pictures\\cat.png`` keeps its drive colon: what follows it is not a number.
    """
    head, weight_raw = split_weight(spec)
    path = head.strip()
    if not path:
        raise PromptError(f"'{spec}' names no file")
    weight = 1.0 if weight_raw is None else _parse_weight(path, weight_raw, max_weight)
    return path, weight
