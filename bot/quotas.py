"""Daily image quotas: how many images a member may make per rolling 24 hours.

Usage is derived from the jobs table (queued, running and done jobs count; failed and
cancelled ones are free), so it can never drift from what the bot actually did.

Which limit applies, most specific first:
1. the user's own override in the guild (`/quota set @user N`, N may be 0 or unlimited):
   an admin naming one person means that person, even if they hold an unlimited role
   (e.g. to slow down one abuser without taking a role away);
2. any of the user's roles being an unlimited role -> unlimited;
3. the guild's default (`/quota default N`);
4. the configured default (`default_daily_quota`; None = unlimited).
A limit of 0 means the user may not generate at all.

The window is rolling, not a calendar day: a slot frees exactly 24 h after the job that
used it was queued, which is fair across time zones and gives an exact "next one at".
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from bot import render
from bot.errors import UserError
from bot.quota_status import QuotaSource, QuotaStatus
from bot.store import Clock, QuotaLimit, Store

WINDOW_SECONDS = 24 * 60 * 60

T = TypeVar("T")


class QuotaExceeded(UserError):
    """The member may not queue another image now (`status`, at `now`). `str(e)` is the
    message to show (`render.quota_exceeded`)."""

    def __init__(self, status: QuotaStatus, now: float) -> None:
        super().__init__(render.quota_exceeded(status, now))
        self.status = status


class QuotaPolicy:
    """Answers "may this member generate now, and how much have they used?".

    `default_daily_quota` is the operator's configured default, None meaning unlimited.
    (Settings' DEFAULT_DAILY_QUOTA uses 0 for unlimited: the app converts `0 -> None`,
    because here 0 consistently means "no images".)
    """

    def __init__(
        self,
        store: Store,
        default_daily_quota: int | None,
        clock: Clock = time.time,
        *,
        window_seconds: float = WINDOW_SECONDS,
    ) -> None:
        if default_daily_quota is not None and default_daily_quota < 0:
            raise ValueError("default_daily_quota must be 0 or more, or None for unlimited")
        self.store = store
        self.default_daily_quota = default_daily_quota
        self.clock = clock
        self.window_seconds = window_seconds
        # One lock per (guild, user), so check-then-queue in `admit` can't be raced by a
        # second command from the same member; weak values: unused locks disappear.
        self._locks: weakref.WeakValueDictionary[tuple[int | None, int], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    async def limit_for(
        self, guild_id: int | None, user_id: int, role_ids: Iterable[int]
    ) -> tuple[int | None, QuotaSource]:
        """The limit that applies to this member and where it comes from (see module doc)."""
        if guild_id is not None:
            override = await self.store.get_quota_override(guild_id, user_id)
            if override is not None:
                return override.limit, QuotaSource.OVERRIDE
            unlimited_roles = set(await self.store.list_unlimited_roles(guild_id))
            if unlimited_roles.intersection(role_ids):
                return None, QuotaSource.ROLE
            guild_default: QuotaLimit | None = await self.store.get_guild_default_quota(guild_id)
            if guild_default is not None:
                return guild_default.limit, QuotaSource.GUILD_DEFAULT
        return self.default_daily_quota, QuotaSource.DEFAULT

    async def check(
        self, guild_id: int | None, user_id: int, role_ids: Iterable[int] = ()
    ) -> QuotaStatus:
        """The member's quota now (for `/usage` and before queueing). Never raises."""
        now = self.clock()
        since = now - self.window_seconds
        limit, source = await self.limit_for(guild_id, user_id, role_ids)
        used = await self.store.count_charged_jobs(guild_id, user_id, since)
        if limit is None:
            return QuotaStatus(None, used, None, None, source)
        remaining = max(0, limit - used)
        resets_at: float | None = None
        if limit > 0 and used > 0:
            # The slot that frees next belongs to the job that must age out for `remaining`
            # to grow: the oldest one, or further along if the user is over the limit.
            skip = max(0, used - limit)
            oldest = await self.store.oldest_charged_job_time(
                guild_id, user_id, since, skip=skip
            )
            if oldest is not None:
                resets_at = oldest + self.window_seconds
        return QuotaStatus(limit, used, remaining, resets_at, source)

    async def require(
        self, guild_id: int | None, user_id: int, role_ids: Iterable[int] = ()
    ) -> QuotaStatus:
        """Like `check`, but raises `QuotaExceeded` if the member may not queue one more."""
        status = await self.check(guild_id, user_id, role_ids)
        if not status.allowed:
            raise QuotaExceeded(status, self.clock())
        return status

    async def admit(
        self,
        guild_id: int | None,
        user_id: int,
        role_ids: Iterable[int],
        enqueue: Callable[[], Awaitable[T]],
    ) -> T:
        """Check the quota and, if allowed, run `enqueue` (which adds the job) atomically.

        Without this, two `/imagine` commands sent together could both pass the check
        before either job is stored. Raises `QuotaExceeded` without calling `enqueue`.
        """
        key = (guild_id, user_id)
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        async with lock:
            await self.require(guild_id, user_id, role_ids)
            return await enqueue()


__all__ = [
    "WINDOW_SECONDS",
    "QuotaExceeded",
    "QuotaPolicy",
]
