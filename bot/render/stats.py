"""`/stats`, for admins: one server's last 7 days (what each figure counts: `bot.stats`)."""

from __future__ import annotations

import datetime
import math

import discord

from bot.render.text import COLOUR_RUNNING
from bot.stats import GuildStats, Spread

#: The longest bar of the images-per-day chart.
STATS_BAR_WIDTH = 12
#: What each kind of failure (`Job.failure`) means, as `/stats` lists them.
FAILURE_CAUSES: dict[str, str] = {
    "crash": "the engine crashed",
    "out_of_memory": "out of memory",
    "shutdown": "interrupted by a restart",
    "prompt": "a prompt the engine refused",
    "input_image": "an image the engine could not use",
    "input_missing": "an input image gone from disk",
    "rejected": "a job the engine refused",
    "engine": "another engine error",
    "internal": "a bug (internal error)",
}


def stat_duration(seconds: float | None) -> str:
    """`under 1 s`, `42 s`, `1 min 35 s`, `2 h 5 min`: a measured duration, rounded to the
    nearest unit (unlike `format_duration`, an estimate rounded up: "2 min" for a median
    of 95 s would misreport a measurement)."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return "under 1 s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def _spread_text(spread: Spread, noun: str) -> str:
    if spread.count == 0:
        return f"no {noun} yet"
    return (f"median {stat_duration(spread.median)} · 95% within {stat_duration(spread.p95)} "
            f"({spread.count} {noun})")


def _utc_date(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%a %Y-%m-%d")


def failure_cause(kind: str | None) -> str:
    if kind is None:
        return "not recorded (failed before this version)"
    return FAILURE_CAUSES.get(kind, kind)


def stats_embed(stats: GuildStats) -> discord.Embed:
    """`/stats`, for admins: the server's last days (what counts is said in `bot.stats`)."""
    embed = discord.Embed(title="This server's images, last 7 days", colour=COLOUR_RUNNING)
    most = max((count for _day, count in stats.per_day), default=0)
    rows = []
    for day, count in stats.per_day:
        bar = "█" * (math.ceil(count / most * STATS_BAR_WIDTH) if most else 0)
        rows.append(f"{_utc_date(day)} {bar:<{STATS_BAR_WIDTH}} {count}")
    embed.add_field(name=f"Images per day (UTC): {stats.images} in all",
                    value="```\n" + "\n".join(rows) + "\n```", inline=False)
    top = "\n".join(f"{rank}. <@{user_id}>: {count} {'image' if count == 1 else 'images'}"
                    for rank, (user_id, count) in enumerate(stats.top_users, 1))
    embed.add_field(name="Top members", value=top or "nobody yet", inline=False)
    embed.add_field(name="GPU time", value=f"{stats.gpu_seconds / 60:.1f} min", inline=False)
    embed.add_field(name="Waiting (queued → started)",
                    value=_spread_text(stats.waiting, "jobs started"), inline=False)
    embed.add_field(name="Running (started → done)",
                    value=_spread_text(stats.running, "images"), inline=False)
    if stats.failed == 0:
        failures = "none"
    else:
        lines = [f"{count} × {failure_cause(kind)}" for kind, count in stats.failures]
        other = stats.failed - sum(count for _cause, count in stats.failures)
        if other:
            lines.append(f"{other} × other causes")
        failures = "\n".join(lines)
    embed.add_field(name=f"Failures: {stats.failed}", value=failures, inline=False)
    embed.set_footer(text=f"This server only, since 00:00 UTC on {_utc_date(stats.since)}. "
                          "Only you can see this.")
    return embed
