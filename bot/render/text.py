"""The pieces every text is made of: user text made safe (`user_text`, `quoted`), times
(`format_duration`, a Discord timestamp), message links, the colours and words of a job's
states and Discord's length limits.
"""

from __future__ import annotations

import math

import discord

from bot.jobs import JobStatus

#: Colours per state, so a glance at the channel tells waiting, working, done, failed.
COLOUR_QUEUED = discord.Colour.light_grey()
COLOUR_RUNNING = discord.Colour.blurple()
COLOUR_DONE = discord.Colour.green()
COLOUR_FAILED = discord.Colour.red()
COLOUR_CANCELLED = discord.Colour.dark_grey()
#: How a job's state is said (the `JobStatus` values are what the store keeps).
JOB_STATUS_WORDS: dict[JobStatus, str] = {
    JobStatus.QUEUED: "queued",
    JobStatus.RUNNING: "running",
    JobStatus.DONE: "done",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
}
#: A job handed to the engine that has not started computing yet (it waits there for room
#: in the batch, or for the engine to come back): it has no iteration to show, and no count
#: is made up for it (`/queue`, `/status`, `/jobs`).
STARTING = "starting"
#: Embed titles are limited to 256 characters; prompts may be 500.
TITLE_LIMIT = 256
#: Embed field values are limited to 1024 characters.
FIELD_LIMIT = 1024


def format_duration(seconds: float) -> str:
    """`45 s`, `3 min`, `1 h 5 min`: coarse on purpose (an ETA is an estimate) and rounded
    *up*, so a wait is never promised shorter than it is."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{max(1, math.ceil(seconds))} s"
    minutes = math.ceil(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def discord_relative_time(epoch: float) -> str:
    """A Discord timestamp (`<t:EPOCH:R>`) that each reader's client shows as "in 3 hours"."""
    return f"<t:{math.ceil(epoch)}:R>"


def user_text(text: str, limit: int | None = None) -> str:
    """Text a user typed (a prompt, a phrase, a file name), made safe to show anywhere: on
    one line, Markdown escaped so it cannot change the layout, mentions defused
    (`@everyone`, `<@id>`, `<@&id>` are shown, never resolved or pinged, whatever the
    message's allowed mentions say), and at most `limit` characters, escapes included,
    cut with an ellipsis."""
    text = " ".join(text.split())
    safe = _escape(text)
    if limit is None or len(safe) <= limit:
        return safe
    cut = limit - 1
    while cut > 0:
        safe = _escape(text[:cut].rstrip()) + "…"
        if len(safe) <= limit:
            return safe
        cut -= len(safe) - limit
    return "…"


def _escape(text: str) -> str:
    return discord.utils.escape_mentions(discord.utils.escape_markdown(text))


def quoted(text: str, limit: int | None = None) -> str:
    """`“a castle”`: user text in quotes, safe as `user_text`."""
    return f"“{user_text(text, None if limit is None else limit - 2)}”"


def message_link(guild_id: int | None, channel_id: int, message_id: int) -> str:
    """The URL that jumps to a message (`@me` stands for the guild in direct messages)."""
    return f"https://discord.com/channels/{guild_id or '@me'}/{channel_id}/{message_id}"
