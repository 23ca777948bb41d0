"""Blocked words and phrases per server (`/blocklist`), and the check every request passes
before it is queued (`check_request`, called by `bot.enqueue.enqueue`).

A term is a sequence of words, a word being a run of letters, digits and combining marks.
It matches where the same words stand in the text, in the same order, with only spaces,
punctuation or underscores between them, and no letter or digit right before or after: "ass" blocks
"ass", "ASS!" and "ass_hat", never "class" or "assassin"; the phrase "bad word" blocks
"Bad-Word" and "bad,  word". Punctuation inside a term therefore only separates its words
("bad-word" is the phrase "bad word"), and a term without any letter or digit is refused.

Both sides are compared after Unicode normalisation: format characters (zero-width
spaces, soft hyphens) are dropped, then NFKC and case folding, so fullwidth letters,
"STRASSE"/"straße" and a zero-width space inside a word do not slip past. Accents are
kept: "pâte" and "pate" are different words in French.

What it does not try: misspellings, l33t speak, letters spaced out one by one. A word list
cannot; it is a floor under a server's rules, not a moderator.

Why the check sits in the enqueue step and not in the cogs: every way of asking
(`/imagine`, `/edit`, the edit modal, Reroll, and any button added later) ends in
`bot.enqueue.enqueue`, so no path can skip it, and it runs before the queue and quota
checks, so a blocked request is never stored or charged.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Mapping

import regex  # stdlib `re` has no Unicode classes: marks (\p{M}) must count as letters

from bot import render
from bot.errors import UserError
from bot.requests import JobRequest, RequestRejected
from bot.store import Store

#: Entries one server may have: enough for a word list, small enough that `/blocklist
#: list` stays readable and the one pattern built from them stays quick.
MAX_TERMS = 200
#: Characters in one entry (a phrase of a few words; prompts are at most 500).
MAX_TERM_CHARS = 80
#: Several terms may be added or removed at once, separated by this.
TERM_SEPARATOR = ","

#: A word character: a letter, a digit, or a mark (the vowel signs of Devanagari or Thai
#: are marks: without them a word of those scripts would fall apart into pieces).
_WORD_CHAR = r"[\p{L}\p{N}\p{M}]"
_WORD = regex.compile(_WORD_CHAR + "+")
_FORMAT_CHARS = regex.compile(r"\p{Cf}+")


class PromptBlocked(RequestRejected):
    """A request with a blocked term in it; `str(e)` tells the member (privately)."""


def fold(text: str) -> str:
    """`text` for comparison: format characters dropped, NFKC, case-folded (the
    "compatibility caseless" form of Unicode's section 3.13, with NFKC for NFKD)."""
    visible = _FORMAT_CHARS.sub("", text)
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", visible).casefold())


def term_key(text: str) -> str:
    """The match key of a term: its words, folded, one space apart (`""` if none)."""
    return " ".join(_WORD.findall(fold(text)))


def display_term(text: str) -> str:
    """An entry as it is kept for `/blocklist list`: as typed, spaces collapsed."""
    return " ".join(text.split())


def parse_terms(text: str) -> dict[str, str]:
    """What an admin typed (one term, or several separated by commas) -> match key ->
    entry, in order, duplicates dropped; a `UserError` with the fix for a bad one."""
    terms: dict[str, str] = {}
    for part in text.split(TERM_SEPARATOR):
        term = display_term(part)
        if not term:
            continue
        if len(term) > MAX_TERM_CHARS:
            raise UserError(render.blocklist_term_too_long(term, MAX_TERM_CHARS))
        key = term_key(term)
        if not key:
            raise UserError(render.blocklist_term_without_words(term))
        terms.setdefault(key, term)
    if not terms:
        raise UserError(render.BLOCKLIST_NO_TERMS)
    return terms


@functools.lru_cache(maxsize=256)
def _pattern(keys: tuple[str, ...]) -> regex.Pattern[str]:
    """One pattern for a server's entries, group i matching `keys[i - 1]`: its words with
    anything but word characters between them, and none right before or after. (Cached:
    a server's list rarely changes between two prompts.)"""
    phrases = ("(" + r"[^\p{L}\p{N}\p{M}]+".join(regex.escape(word) for word in key.split()) + ")"
               for key in keys)
    return regex.compile(f"(?<!{_WORD_CHAR})(?:{'|'.join(phrases)})(?!{_WORD_CHAR})")


def find_blocked(text: str, terms: Mapping[str, str]) -> str | None:
    """The entry (as typed) of the first blocked term in `text`, or None; `terms` maps
    match keys to entries, as `Store.list_blocked_terms` returns them."""
    if not terms or not text:
        return None
    # Longest first: where "bad" and "bad word" both match, name the phrase.
    keys = tuple(sorted(terms, key=lambda key: (-len(key), key)))
    found = _pattern(keys).search(fold(text))
    if found is None or found.lastindex is None:
        return None
    return terms[keys[found.lastindex - 1]]


async def check_request(store: Store, guild_id: int | None, request: JobRequest) -> None:
    """Refuse `request` (`PromptBlocked`) if its prompt or its `replace` phrase (shown in
    the job's public message too) holds a term blocked on this server."""
    if guild_id is None:
        return
    terms = await store.list_blocked_terms(guild_id)
    for text in (request.prompt, request.replace or ""):
        term = find_blocked(text, terms)
        if term is not None:
            raise PromptBlocked(render.prompt_blocked(term))
