"""Daily quotas in words: the refusal when one is used up, `/usage` (members), and
`/quota ...` (admins). `/usage` and `/quota show @member` describe a quota in exactly the
same words (`quota_status_text`).

Zero versus unlimited: on Discord `images:0` always means "may not make images", and
unlimited is always said as such (`describe_limit`), so no number ever means two things.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bot.quota_status import QuotaSource, QuotaStatus
from bot.render.text import discord_relative_time, format_duration

# ---- a quota in words


def describe_limit(limit: int | None) -> str:
    """A limit as words: `unlimited`, `0 images (may not make images)`, `5 images per 24 h`."""
    if limit is None:
        return "unlimited"
    if limit == 0:
        return "0 images (may not make images)"
    noun = "image" if limit == 1 else "images"
    return f"{limit} {noun} per 24 h"


#: Why a limit applies, in the order `QuotaPolicy.limit_for` decides it.
QUOTA_SOURCE_TEXT: dict[QuotaSource, str] = {
    QuotaSource.OVERRIDE: "a personal limit set by an admin",
    QuotaSource.ROLE: "from an unlimited role",
    QuotaSource.GUILD_DEFAULT: "this server's default",
    QuotaSource.DEFAULT: "the bot's default",
}


def limit_with_source(status: QuotaStatus) -> str:
    """`5 images per 24 h (this server's default)`."""
    return f"{describe_limit(status.limit)} ({QUOTA_SOURCE_TEXT[status.source]})"


def quota_status_text(status: QuotaStatus, now: float) -> str:
    """The body shared by `/usage` and `/quota show @member`: limit and why, used, left,
    and when the next slot frees (a Discord timestamp each reader sees in their own time)."""
    lines = [f"Quota: **{describe_limit(status.limit)}** ({QUOTA_SOURCE_TEXT[status.source]})."]
    if status.unlimited:
        lines.append(f"Used in the last 24 h: {status.used}.")
        return "\n".join(lines)
    lines.append(f"Used in the last 24 h: {status.used} · left: {status.remaining}.")
    if status.resets_at is not None:
        wait = format_duration(max(0.0, status.resets_at - now))
        when = f"{discord_relative_time(status.resets_at)} (in {wait})"
        if status.remaining == 0:
            lines.append(f"Next image possible {when}.")
        else:
            lines.append(f"Next slot frees {when}.")
    return "\n".join(lines)


# ---- members: the refusal, /usage


def quota_exceeded(status: QuotaStatus, now: float) -> str:
    """The refusal when a member is out of quota: how much was used, when it frees."""
    if status.limit == 0:
        return (
            "You can't make images on this server: your daily quota is 0. "
            "Ask a server admin if you think that's a mistake."
        )
    noun = "image" if status.limit == 1 else "images"
    text = f"You have used {status.used} of {status.limit} {noun} in the last 24 h"
    if status.resets_at is None:  # cannot happen with used >= limit > 0; be safe anyway
        return text + "."
    wait = max(0.0, status.resets_at - now)
    return (
        f"{text}; your next one frees up in {format_duration(wait)} "
        f"({discord_relative_time(status.resets_at)})."
    )


def usage_text(status: QuotaStatus, now: float, *, in_server: bool) -> str:
    """`/usage`'s quota part (the member's defaults follow it, `usage_defaults`)."""
    where = "on this server" if in_server else "in direct messages"
    return (
        f"**Your images {where}**\n{quota_status_text(status, now)}\n"
        "-# Each image counts for 24 h after you asked for it; failed and cancelled ones are free."
    )


# ---- admins: /quota


QUOTA_CHOOSE_ONE = (
    "Say how many: `images:N` (0 = may not make images) or `unlimited:True`, one of the two."
)


def quota_set(member: str, limit: int | None, before: QuotaStatus, after: QuotaStatus) -> str:
    """`/quota set`: `member` (a mention) now has their own `limit`."""
    return (
        f"{member}'s quota is now **{describe_limit(limit)}**, their own "
        f"(was {describe_limit(before.limit)}, {QUOTA_SOURCE_TEXT[before.source]}). "
        "It applies even if they hold an unlimited role.\n"
        f"Used in the last 24 h: {after.used}"
        + (f" · left: {after.remaining}." if after.remaining is not None else ".")
    )


def quota_reset(member: str, after: QuotaStatus, *, removed: bool) -> str:
    """`/quota reset`: `member`'s own limit removed (or there was none)."""
    if removed:
        return f"Removed {member}'s own quota; they now have {limit_with_source(after)}."
    return (f"{member} had no quota of their own; nothing changed. "
            f"They have {limit_with_source(after)}.")


def server_default_quota(limit: int | None, *, own: bool) -> str:
    """`10 images per 24 h, this server's own` or `..., the bot's default`."""
    whose = "this server's own" if own else "the bot's default"
    return f"{describe_limit(limit)}, {whose}"


def quota_default_set(limit: int | None, before: str) -> str:
    """`/quota default`; `before` is `server_default_quota` before the change."""
    return (f"This server's default quota is now **{describe_limit(limit)}** (was {before}). "
            "Members with their own quota or an unlimited role keep theirs.")


def quota_default_reset(configured: int | None, *, removed: bool) -> str:
    """`/quota reset-default`: back to the bot's configured default."""
    if removed:
        return f"This server now uses the bot's default quota: **{describe_limit(configured)}**."
    return (f"This server already uses the bot's default quota ({describe_limit(configured)}); "
            "nothing changed.")


def role_unlimited(role: str, *, changed: bool) -> str:
    """`/quota unlimited @role`; `role` is its mention."""
    if changed:
        return (f"{role} is now unlimited: its members may make any number of images, "
                "except members with their own quota (`/quota set`), which still applies.")
    return f"{role} was already unlimited; nothing changed."


def role_not_unlimited(role: str, *, changed: bool) -> str:
    """`/quota unlimited @role remove:True`."""
    if changed:
        return (f"{role} is no longer unlimited; its members get the server default "
                "(or their own quota).")
    return f"{role} was not unlimited; nothing changed."


def member_quota(member: str, status: QuotaStatus, now: float) -> str:
    """`/quota show @member`."""
    return f"**{member}**\n{quota_status_text(status, now)}"


#: How many per-member quotas `/quota show` lists before saying "... and N more"
#: (a Discord message holds 2000 characters).
SHOW_MAX_OVERRIDES = 25


def server_quotas(default: str, unlimited_roles: Sequence[int],
                  overrides: Mapping[int, int | None]) -> str:
    """`/quota show`: the server's default (`server_default_quota`), its unlimited roles and
    the members with their own limit (user id -> limit)."""
    lines = [f"**Image quotas on this server**\nDefault: {default}."]
    roles = ", ".join(f"<@&{role}>" for role in unlimited_roles) if unlimited_roles else "none"
    lines.append(f"Unlimited roles: {roles}.")
    if not overrides:
        lines.append("Members with their own quota: none.")
    else:
        lines.append(f"Members with their own quota ({len(overrides)}):")
        for user_id, limit in list(overrides.items())[:SHOW_MAX_OVERRIDES]:
            lines.append(f"<@{user_id}>: {describe_limit(limit)}")
        if len(overrides) > SHOW_MAX_OVERRIDES:
            lines.append(f"… and {len(overrides) - SHOW_MAX_OVERRIDES} more.")
    return "\n".join(lines)
