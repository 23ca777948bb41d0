"""`/blocklist add|remove|list` (admins), and the refusal of a prompt that holds a blocked
term (members)."""

from __future__ import annotations

from bot.render.text import quoted

BLOCKLIST_NO_TERMS = (
    "Name a word or phrase, e.g. `/blocklist add terms:gore`; separate several with commas "
    "(`gore, blood bath`)."
)
#: How much of `/blocklist list` one answer shows (a message holds 2000 characters).
BLOCKLIST_LIST_CHARS = 1700


def blocklist_term_too_long(term: str, limit: int) -> str:
    return (f"{quoted(term, 40)} is {len(term)} characters; an entry may have at most {limit}. "
            "Block a shorter word or phrase.")


def blocklist_term_without_words(term: str) -> str:
    return (f"{quoted(term, 40)} has no letters or digits, so it can never match a whole word. "
            "Block words or phrases, e.g. `gore`.")


def prompt_blocked(term: str) -> str:
    """The private refusal of a blocked request: which entry (escaped, as all user text),
    and that nothing was queued or charged."""
    return (f"This server's admins have blocked {quoted(term, 90)}, and your request contains "
            "it. Rephrase it and try again. Nothing was queued and you were not charged.")


def _quoted_list(terms: list[str]) -> str:
    return ", ".join(quoted(term, 90) for term in terms)


def blocklist_full(count: int, adding: int, limit: int) -> str:
    return (f"The blocklist has {count} of at most {limit} entries, so {adding} more do not fit; "
            "nothing was added. Remove some with `/blocklist remove`, or block fewer at once.")


def blocklist_added(added: list[str], already: list[str], full: list[str], count: int,
                    limit: int) -> str:
    lines = []
    if added:
        lines.append(f"Blocked on this server: {_quoted_list(added)}. Prompts with "
                     f"{'it' if len(added) == 1 else 'them'} are now refused, privately and free.")
    if already:
        lines.append(f"Already blocked, nothing changed: {_quoted_list(already)}.")
    if full:
        lines.append(f"Not added, the blocklist is full ({limit}): {_quoted_list(full)}.")
    lines.append(f"-# The blocklist has {count} of at most {limit} entries.")
    return "\n".join(lines)


def blocklist_removed(removed: list[str], missing: list[str], count: int) -> str:
    lines = []
    if removed:
        lines.append(f"No longer blocked: {_quoted_list(removed)}.")
    if missing:
        lines.append(f"Not on the blocklist, nothing changed: {_quoted_list(missing)}. "
                     "See `/blocklist list`.")
    lines.append(f"-# The blocklist has {count} {'entry' if count == 1 else 'entries'}.")
    return "\n".join(lines)


def blocklist_list(terms: list[str], limit: int) -> str:
    """`/blocklist list`: every entry that fits in one message, then how many more."""
    if not terms:
        return ("Nothing is blocked on this server. Add words or phrases with "
                "`/blocklist add terms:...`.")
    head = f"**Blocked on this server** ({len(terms)} of at most {limit}):\n"
    shown: list[str] = []
    length = len(head)
    for term in terms:
        item = quoted(term, 90)
        if length + len(item) + 2 > BLOCKLIST_LIST_CHARS:
            break
        shown.append(item)
        length += len(item) + 2
    more = len(terms) - len(shown)
    return head + ", ".join(shown) + (f"\n… and {more} more." if more else "")
