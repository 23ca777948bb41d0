"""`/stats`: one server's figures over the last days, for its admins.

What each figure counts (all of them this server's jobs only, from 00:00 UTC `days - 1`
days ago until now, the same window for every figure):
- images per day: jobs that finished `done`, by the UTC day they finished;
- top members: the same images, by who asked;
- GPU time: for every job that started and ended in the window, the engine's own seconds
  for a done job, else (failed, cancelled) the time from start to end: the engine was busy
  with it either way;
- waiting: `started_at - created_at` of the jobs that started in the window (a job that
  waited through a restart counts the whole wait);
- running: `finished_at - started_at` of the images finished in the window;
- failures: failed jobs grouped by their kind (`Job.failure`: crash, out of memory, ...),
  so one cause counts once however its message was worded.

Counting and grouping run in SQL (`bot.store`); the median and the 95th percentile are
taken here from the sorted durations SQL returns, since SQLite has no percentile function.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from bot.store import Store

DAY = 86400
#: The window `/stats` shows.
STATS_DAYS = 7
#: Members listed under "top members", failure causes listed before "other".
TOP_USERS = 5
TOP_FAILURES = 5


@dataclass(frozen=True)
class Spread:
    """Median and 95th percentile of some durations in seconds (None when there are none)."""

    count: int
    median: float | None
    p95: float | None


@dataclass(frozen=True)
class GuildStats:
    since: float  # 00:00 UTC of the window's first day
    #: (00:00 UTC of the day, images finished that day), oldest first, every day listed.
    per_day: tuple[tuple[float, int], ...]
    top_users: tuple[tuple[int, int], ...]  # (user id, images), most first
    gpu_seconds: float
    waiting: Spread
    running: Spread
    failed: int
    #: (error text, jobs), most first, at most TOP_FAILURES; `failed` counts all of them.
    failures: tuple[tuple[str | None, int], ...]

    @property
    def images(self) -> int:
        return sum(count for _day, count in self.per_day)


def spread(values: Sequence[float]) -> Spread:
    """Median and 95th percentile (linear between the closest ranks, as
    `statistics.quantiles(method="inclusive")`: never beyond the largest value)."""
    if not values:
        return Spread(0, None, None)
    if len(values) == 1:
        return Spread(1, values[0], values[0])
    p95 = statistics.quantiles(values, n=20, method="inclusive")[-1]
    return Spread(len(values), statistics.median(values), p95)


def window_start(now: float, days: int = STATS_DAYS) -> float:
    """00:00 UTC of the first of the `days` days that end with today."""
    return (now - now % DAY) - (days - 1) * DAY


async def guild_stats(store: Store, guild_id: int, now: float, days: int = STATS_DAYS) -> GuildStats:
    """The figures of one server's last `days` UTC days (see the module docstring)."""
    since = window_start(now, days)
    per_day = await store.images_per_day(guild_id, since)
    first_day = int(since // DAY)
    failures = await store.failure_counts(guild_id, since)
    return GuildStats(
        since=since,
        per_day=tuple(((first_day + i) * DAY, per_day.get(first_day + i, 0)) for i in range(days)),
        top_users=tuple(await store.top_users(guild_id, since, TOP_USERS)),
        gpu_seconds=await store.gpu_seconds(guild_id, since),
        waiting=spread(await store.waiting_times(guild_id, since)),
        running=spread(await store.running_times(guild_id, since)),
        failed=sum(count for _cause, count in failures),
        failures=tuple(failures[:TOP_FAILURES]),
    )
