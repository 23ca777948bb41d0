"""SQLite persistence for the bot: jobs, quota overrides, unlimited roles, guild settings.

One file, opened through aiosqlite so the event loop never blocks on disk. The store is
the source of truth across restarts: the in-memory scheduler is rebuilt from it
(`requeue_running` + `jobs_with_status(QUEUED)`), and quota usage is *derived* from the
jobs table (no separate counters that could drift from what actually ran).

Schema versions are tracked with `PRAGMA user_version`; `MIGRATIONS[i]` takes the
database from version i to i+1, so a new release appends a migration and never edits an
old one. Opening a database written by a newer release fails loudly instead of guessing.

Timestamps are UTC epoch floats from an injectable clock (tests move time by hand).
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

import aiosqlite

from bot.jobs import (CHARGED_STATUSES, FINISHED_STATUSES, Job, JobStatus, QueueNote,
                      new_job_id, normalize_job_id)

Clock = Callable[[], float]


class StoreError(Exception):
    """The database cannot be used (e.g. written by a newer version of the bot)."""


class JobNotFound(KeyError):
    """No job with that id."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id

    def __str__(self) -> str:
        return f"there is no job {self.job_id!r}"


class JobStateError(Exception):
    """A status change that the job's current status does not allow (e.g. cancel a done job).

    Races are normal here (a user presses Cancel as the engine finishes), so callers catch
    this and tell the user what actually happened, from `current`.
    """

    def __init__(self, job_id: str, current: JobStatus, wanted: JobStatus) -> None:
        super().__init__(f"job {job_id} is {current}, it cannot become {wanted}")
        self.job_id = job_id
        self.current = current
        self.wanted = wanted


@dataclass(frozen=True)
class QuotaLimit:
    """A configured quota: `limit` images per rolling 24 h, None meaning unlimited.

    Wrapped so "set to unlimited" (QuotaLimit(None)) is distinct from "not set" (None).
    """

    limit: int | None

    @property
    def unlimited(self) -> bool:
        return self.limit is None


@dataclass(frozen=True)
class MemberSettings:
    """A member's own defaults in one server (`/settings`); None = the server's default.

    `shape` is a key of `bot.requests.SHAPES`; `iterations` is as the member set it, which
    may be above a MAX_ITERATIONS lowered since (`bot.requests.member_iterations` caps it).
    """

    shape: str | None = None
    iterations: int | None = None

    @property
    def is_empty(self) -> bool:
        return self.shape is None and self.iterations is None


class AddOutcome(StrEnum):
    """What `Store.add_blocked_term` did."""

    ADDED = "added"
    ALREADY = "already"  # an entry with the same key was there: nothing changed
    FULL = "full"  # the server already has `max_terms` entries: nothing changed


_SCHEMA_V1 = """
CREATE TABLE jobs (
    id                  TEXT PRIMARY KEY,
    guild_id            INTEGER,
    channel_id          INTEGER NOT NULL,
    user_id             INTEGER NOT NULL,
    kind                TEXT NOT NULL,
    prompt              TEXT NOT NULL,
    params              TEXT NOT NULL DEFAULT '{}',
    iterations          INTEGER NOT NULL CHECK (iterations >= 0),
    status              TEXT NOT NULL
                        CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    created_at          REAL NOT NULL,
    started_at          REAL,
    finished_at         REAL,
    input_path          TEXT,
    parent_id           TEXT,
    progress_message_id INTEGER,
    result_message_id   INTEGER,
    result_path         TEXT,
    seed                INTEGER,
    seconds             REAL,
    error               TEXT
);
CREATE INDEX jobs_usage ON jobs (guild_id, user_id, created_at);
CREATE INDEX jobs_status ON jobs (status, created_at);
CREATE INDEX jobs_channel_done ON jobs (channel_id, finished_at);
CREATE INDEX jobs_result_message ON jobs (result_message_id);

-- Row present = an override is set; daily_limit NULL = unlimited.
CREATE TABLE quota_overrides (
    guild_id    INTEGER NOT NULL,
    user_id     INTEGER NOT NULL,
    daily_limit INTEGER CHECK (daily_limit IS NULL OR daily_limit >= 0),
    PRIMARY KEY (guild_id, user_id)
);

CREATE TABLE unlimited_roles (
    guild_id INTEGER NOT NULL,
    role_id  INTEGER NOT NULL,
    PRIMARY KEY (guild_id, role_id)
);

-- One row per guild, for all its settings. default_quota_set = 0: use the configured
-- default; 1: default_daily_quota applies (NULL = unlimited).
CREATE TABLE guild_settings (
    guild_id            INTEGER PRIMARY KEY,
    default_quota_set   INTEGER NOT NULL DEFAULT 0 CHECK (default_quota_set IN (0, 1)),
    default_daily_quota INTEGER CHECK (default_daily_quota IS NULL OR default_daily_quota >= 0)
);
"""

# Issue 11 items 9-10: blocked words per server (`/blocklist`), a member's own defaults
# (`/settings`), and an index for `/stats`, which reads one server's recently finished jobs.
_SCHEMA_BLOCKLIST_AND_MEMBER_SETTINGS = """
-- `folded` is the match key (bot.blocklist.term_key: the term's words, case-folded, one
-- space apart): one row per key, so "Bad-Word" and "bad word" are one entry. `term` is
-- the entry as the admin typed it, for /blocklist list.
CREATE TABLE blocked_terms (
    guild_id INTEGER NOT NULL,
    folded   TEXT NOT NULL CHECK (folded <> ''),
    term     TEXT NOT NULL,
    added_by INTEGER NOT NULL,
    added_at REAL NOT NULL,
    PRIMARY KEY (guild_id, folded)
);

-- A member's own defaults in one server; NULL = the server's default. A row with both
-- NULL is deleted, so a row present means something is set.
CREATE TABLE member_settings (
    guild_id   INTEGER NOT NULL,
    user_id    INTEGER NOT NULL,
    shape      TEXT,
    iterations INTEGER CHECK (iterations IS NULL OR iterations >= 1),
    PRIMARY KEY (guild_id, user_id)
);

CREATE INDEX jobs_guild_finished ON jobs (guild_id, finished_at);
"""

# Issue 11 items 4-6: why a job failed, as a kind (`Job.failure`), so that Retry knows
# after a restart whether the failure was the user's; and the lookup of a job by its
# message (the "Edit image" menu on a progress message, `/cancel`).
_FAILURE_AND_MESSAGE_INDEX = """
ALTER TABLE jobs ADD COLUMN failure TEXT;
CREATE INDEX jobs_progress_message ON jobs (progress_message_id);
"""

# Issue 11 item 8: the message that shows a result's timelapse, so a second click on
# Timelapse links to it instead of posting it again.
_TIMELAPSE_MESSAGE = """
ALTER TABLE jobs ADD COLUMN timelapse_message_id INTEGER;
"""

# What each waiting job's message last said about its place in the queue
# (`bot/queue_notes.py`). A restarted bot reads it back: no two messages may claim the same
# place, and a message already right is not edited again. position NULL: no place shown.
_QUEUE_NOTES = """
CREATE TABLE queue_notes (
    job_id      TEXT PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    position    INTEGER CHECK (position IS NULL OR position >= 1),
    ready_at    INTEGER,
    engine_down INTEGER NOT NULL DEFAULT 0 CHECK (engine_down IN (0, 1))
);
"""

#: MIGRATIONS[i] upgrades a database at user_version i to i + 1. Append; never edit.
MIGRATIONS: tuple[str, ...] = (
    _SCHEMA_V1, _SCHEMA_BLOCKLIST_AND_MEMBER_SETTINGS, _FAILURE_AND_MESSAGE_INDEX, _TIMELAPSE_MESSAGE,
    _QUEUE_NOTES,
)
SCHEMA_VERSION = len(MIGRATIONS)

_JOB_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Job))
_UPDATABLE_COLUMNS: frozenset[str] = frozenset(_JOB_COLUMNS) - {"id"}

# Which statuses each transition may start from.
_ALLOWED_FROM: dict[JobStatus, tuple[JobStatus, ...]] = {
    JobStatus.RUNNING: (JobStatus.QUEUED,),
    JobStatus.DONE: (JobStatus.RUNNING,),
    JobStatus.FAILED: (JobStatus.QUEUED, JobStatus.RUNNING),
    JobStatus.CANCELLED: (JobStatus.QUEUED, JobStatus.RUNNING),
}


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"a quota must be a whole number of images, 0 or more (got {limit!r})")


def _row_to_job(row: sqlite3.Row) -> Job:
    values = {name: row[name] for name in _JOB_COLUMNS}
    values["params"] = json.loads(values["params"]) if values["params"] else {}
    values["status"] = JobStatus(values["status"])
    return Job(**values)


def _to_db(column: str, value: Any) -> Any:
    if column == "params":
        return json.dumps(value if value is not None else {}, sort_keys=True)
    if column == "status":
        return JobStatus(value).value
    return value


class Store:
    """The bot's database. Create with `await Store.open(path)`; `await close()` at shutdown."""

    def __init__(self, db: aiosqlite.Connection, clock: Clock) -> None:
        """Use `Store.open`; this only wraps an already prepared connection."""
        self._db = db
        self.clock = clock

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def open(cls, path: str | Path, *, clock: Clock = time.time) -> Store:
        """Open (creating it and its directory if needed) and migrate the database.

        WAL mode lets readers (e.g. `/queue`) proceed while a write is in progress and
        survives a crash without corrupting the file. `":memory:"` works too (tests).
        """
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: autocommit; every public method is one statement or takes
        # care of its own transaction, so nothing is left uncommitted at a crash.
        db = await aiosqlite.connect(str(path), isolation_level=None)
        try:
            db.row_factory = aiosqlite.Row
            for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=5000",
                           "foreign_keys=ON"):
                # Close each cursor: `journal_mode` answers with a row, and an unread
                # cursor keeps a statement open, which makes the migration's COMMIT fail.
                async with db.execute(f"PRAGMA {pragma}"):
                    pass
            await cls._migrate(db)
        except BaseException:
            await db.close()
            raise
        return cls(db, clock)

    @staticmethod
    async def _migrate(db: aiosqlite.Connection) -> None:
        async with db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the database is at schema version {version} but this bot only knows up to "
                f"{SCHEMA_VERSION}; it was written by a newer release: upgrade the bot"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            # One script = one transaction, so a failed migration leaves the old version.
            await db.executescript(
                f"BEGIN;\n{MIGRATIONS[target - 1]}\nPRAGMA user_version = {target};\nCOMMIT;"
            )

    async def schema_version(self) -> int:
        async with self._db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def close(self) -> None:
        await self._db.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ jobs

    async def add_job(
        self,
        *,
        guild_id: int | None,
        channel_id: int,
        user_id: int,
        kind: str,
        prompt: str,
        iterations: int,
        params: Mapping[str, Any] | None = None,
        input_path: str | None = None,
        parent_id: str | None = None,
        job_id: str | None = None,
    ) -> Job:
        """Insert a new queued job, charged to the user from this moment (`created_at`).

        The id is random (see `new_job_id`); on the rare collision a new one is drawn.
        `job_id` may be given (tests, imports); then a collision is an error.
        """
        job = Job(
            id=job_id or new_job_id(),
            guild_id=guild_id,
            channel_id=channel_id,
            user_id=user_id,
            kind=str(kind),
            prompt=prompt,
            iterations=iterations,
            params=dict(params or {}),
            status=JobStatus.QUEUED,
            created_at=self.clock(),
            input_path=input_path,
            parent_id=parent_id,
        )
        columns = ", ".join(_JOB_COLUMNS)
        placeholders = ", ".join("?" for _ in _JOB_COLUMNS)
        for _attempt in range(10):
            values = [_to_db(name, getattr(job, name)) for name in _JOB_COLUMNS]
            try:
                await self._db.execute(
                    f"INSERT INTO jobs ({columns}) VALUES ({placeholders})", values
                )
                return job
            except sqlite3.IntegrityError:
                if job_id is not None or not await self._job_exists(job.id):
                    raise
                job.id = new_job_id()
        raise StoreError("could not find a free job id")  # 10 collisions in 2**40: broken RNG

    async def _job_exists(self, job_id: str) -> bool:
        async with self._db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)) as cursor:
            return await cursor.fetchone() is not None

    async def get_job(self, job_id: str) -> Job | None:
        """The job with this id (as a user typed it: case and spaces ignored), or None."""
        async with self._db.execute(
            "SELECT * FROM jobs WHERE id = ?", (normalize_job_id(job_id),)
        ) as cursor:
            row = await cursor.fetchone()
        return _row_to_job(row) if row is not None else None

    async def _require_job(self, job_id: str) -> Job:
        job = await self.get_job(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    async def update_job(self, job_id: str, **changes: Any) -> Job:
        """Set any job fields except `id` (e.g. `progress_message_id=...`); returns the job.

        This does not check status transitions: use the `mark_*` methods for those.
        """
        unknown = set(changes) - _UPDATABLE_COLUMNS
        if unknown:
            raise TypeError(f"jobs have no updatable field(s) {sorted(unknown)}")
        job_id = normalize_job_id(job_id)
        if changes:
            assignments = ", ".join(f"{name} = ?" for name in changes)
            values = [_to_db(name, value) for name, value in changes.items()]
            cursor = await self._db.execute(
                f"UPDATE jobs SET {assignments} WHERE id = ?", (*values, job_id)
            )
            if cursor.rowcount == 0:
                raise JobNotFound(job_id)
        return await self._require_job(job_id)

    async def message_moved(self, job: Job, message_id: int | None) -> None:
        """The job's final state was posted as a new message (`JobMessages` posts results
        and failures anew, to notify): that message is the job's message from now on."""
        if message_id is not None and message_id != job.progress_message_id:
            await self.update_job(job.id, progress_message_id=message_id)

    async def _transition(self, job_id: str, to: JobStatus, **changes: Any) -> Job:
        """Atomically move a job to `to` if its current status allows it."""
        job_id = normalize_job_id(job_id)
        allowed = _ALLOWED_FROM[to]
        changes["status"] = to
        assignments = ", ".join(f"{name} = ?" for name in changes)
        values = [_to_db(name, value) for name, value in changes.items()]
        status_marks = ", ".join("?" for _ in allowed)
        cursor = await self._db.execute(
            f"UPDATE jobs SET {assignments} WHERE id = ? AND status IN ({status_marks})",
            (*values, job_id, *(s.value for s in allowed)),
        )
        if cursor.rowcount == 0:
            job = await self._require_job(job_id)
            raise JobStateError(job_id, job.status, to)
        return await self._require_job(job_id)

    async def mark_running(self, job_id: str) -> Job:
        """queued -> running; stamps `started_at`."""
        return await self._transition(job_id, JobStatus.RUNNING, started_at=self.clock())

    async def mark_done(
        self,
        job_id: str,
        *,
        result_path: str,
        seed: int,
        seconds: float,
        iterations: int | None = None,
        result_message_id: int | None = None,
    ) -> Job:
        """running -> done with the engine's result; `iterations` = how many actually ran."""
        changes: dict[str, Any] = {
            "finished_at": self.clock(),
            "result_path": result_path,
            "seed": seed,
            "seconds": seconds,
            "error": None,
        }
        if iterations is not None:
            changes["iterations"] = iterations
        if result_message_id is not None:
            changes["result_message_id"] = result_message_id
        return await self._transition(job_id, JobStatus.DONE, **changes)

    async def mark_failed(self, job_id: str, error: str, *, failure: str | None = None) -> Job:
        """queued/running -> failed, with a reason fit to show the user and, if known, its
        kind (`failure`: an `engine.protocol.FAIL_*` reason, which decides Retry). Not
        charged."""
        return await self._transition(
            job_id, JobStatus.FAILED, finished_at=self.clock(), error=error, failure=failure
        )

    async def mark_cancelled(self, job_id: str) -> Job:
        """queued/running -> cancelled. Not charged."""
        return await self._transition(job_id, JobStatus.CANCELLED, finished_at=self.clock())

    async def jobs_with_status(
        self,
        *statuses: JobStatus | str,
        guild_id: int | None = None,
        user_id: int | None = None,
        limit: int | None = None,
    ) -> list[Job]:
        """Jobs in any of `statuses` (all jobs if none given), oldest first.

        Ties on `created_at` keep insertion order, so a restart restores the exact order.
        """
        where: list[str] = []
        args: list[Any] = []
        if statuses:
            where.append(f"status IN ({', '.join('?' for _ in statuses)})")
            args.extend(JobStatus(s).value for s in statuses)
        if guild_id is not None:
            where.append("guild_id = ?")
            args.append(guild_id)
        if user_id is not None:
            where.append("user_id = ?")
            args.append(user_id)
        sql = "SELECT * FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at, rowid"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        async with self._db.execute(sql, args) as cursor:
            rows = await cursor.fetchall()
        return [_row_to_job(row) for row in rows]

    async def requeue_running(self) -> list[Job]:
        """At start-up: jobs left `running` by a stopped bot go back to `queued`.

        Returns them oldest first so the caller can put them at the front of the queue.
        `started_at` is cleared; the progress message id is kept so it can be reused.
        """
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            async with self._db.execute(
                "SELECT id FROM jobs WHERE status = 'running' ORDER BY created_at, rowid"
            ) as cursor:
                ids = [row[0] for row in await cursor.fetchall()]
            await self._db.execute(
                "UPDATE jobs SET status = 'queued', started_at = NULL WHERE status = 'running'"
            )
            await self._db.execute("COMMIT")
        except BaseException:
            await self._db.execute("ROLLBACK")
            raise
        return [await self._require_job(job_id) for job_id in ids]

    async def latest_done_job(self, channel_id: int) -> Job | None:
        """The most recently finished successful job in a channel (`/edit PROMPT` alone)."""
        async with self._db.execute(
            "SELECT * FROM jobs WHERE channel_id = ? AND status = 'done' "
            "ORDER BY finished_at DESC, rowid DESC LIMIT 1",
            (channel_id,),
        ) as cursor:
            row = await cursor.fetchone()
        return _row_to_job(row) if row is not None else None

    async def job_by_message(self, message_id: int) -> Job | None:
        """The job whose progress or result message this is (a progress message becomes
        the result, so both ids usually agree)."""
        async with self._db.execute(
            "SELECT * FROM jobs WHERE progress_message_id = ? OR result_message_id = ? "
            "ORDER BY rowid DESC LIMIT 1",
            (message_id, message_id),
        ) as cursor:
            row = await cursor.fetchone()
        return _row_to_job(row) if row is not None else None

    async def recent_jobs(self, guild_id: int | None, user_id: int, limit: int) -> list[Job]:
        """The user's newest `limit` jobs in a guild, unfinished ones first, each part
        newest first (`/jobs`)."""
        unfinished = ", ".join(f"'{s.value}'" for s in (JobStatus.QUEUED, JobStatus.RUNNING))
        async with self._db.execute(
            f"SELECT * FROM jobs WHERE guild_id IS ? AND user_id = ? "
            f"ORDER BY status IN ({unfinished}) DESC, created_at DESC, rowid DESC LIMIT ?",
            (guild_id, user_id, limit),
        ) as cursor:
            rows = await cursor.fetchall()
        return [_row_to_job(row) for row in rows]

    async def count_jobs(self, guild_id: int | None, user_id: int) -> int:
        """How many jobs the user ever asked for in a guild."""
        async with self._db.execute(
            "SELECT COUNT(*) FROM jobs WHERE guild_id IS ? AND user_id = ?", (guild_id, user_id)
        ) as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def job_by_result_message(self, message_id: int) -> Job | None:
        """The job whose result was posted as this message (context menu "Edit image")."""
        async with self._db.execute(
            "SELECT * FROM jobs WHERE result_message_id = ? LIMIT 1", (message_id,)
        ) as cursor:
            row = await cursor.fetchone()
        return _row_to_job(row) if row is not None else None

    # ------------------------------------------------------------------ usage

    _CHARGED_SQL = ", ".join(f"'{s.value}'" for s in sorted(CHARGED_STATUSES))

    async def count_charged_jobs(self, guild_id: int | None, user_id: int, since: float) -> int:
        """How many charged jobs (queued, running, done) the user created after `since`.

        Failed and cancelled jobs are free. A job created exactly at `since` has aged out.
        """
        async with self._db.execute(
            f"SELECT COUNT(*) FROM jobs WHERE guild_id IS ? AND user_id = ? "
            f"AND created_at > ? AND status IN ({self._CHARGED_SQL})",
            (guild_id, user_id, since),
        ) as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def oldest_charged_job_time(
        self, guild_id: int | None, user_id: int, since: float, *, skip: int = 0
    ) -> float | None:
        """`created_at` of the oldest charged job after `since` (or the `skip`-th after it).

        The quota window frees a slot when that job ages out; `skip` finds the right job
        when the user is more than one over the limit (e.g. after the limit was lowered).
        """
        async with self._db.execute(
            f"SELECT created_at FROM jobs WHERE guild_id IS ? AND user_id = ? "
            f"AND created_at > ? AND status IN ({self._CHARGED_SQL}) "
            f"ORDER BY created_at, rowid LIMIT 1 OFFSET ?",
            (guild_id, user_id, since, skip),
        ) as cursor:
            row = await cursor.fetchone()
        return float(row[0]) if row else None

    async def count_finished_since(self, since: float) -> dict[JobStatus, int]:
        """How many jobs ended at or after `since`, by final status (done, failed,
        cancelled; a status with none is absent): `/status`'s jobs today."""
        finished = ", ".join(f"'{s.value}'" for s in sorted(FINISHED_STATUSES))
        async with self._db.execute(
            f"SELECT status, COUNT(*) FROM jobs WHERE finished_at >= ? "
            f"AND status IN ({finished}) GROUP BY status",
            (since,),
        ) as cursor:
            rows = await cursor.fetchall()
        return {JobStatus(status): int(count) for status, count in rows}

    async def seconds_per_iteration_estimate(self, sample: int = 20) -> float | None:
        """Median seconds per iteration over the last `sample` done jobs, or None if none.

        The median, because one job that waited on a model load or ran at an unusual size
        should not swing the ETAs of everyone else.
        """
        async with self._db.execute(
            "SELECT seconds, iterations FROM jobs WHERE status = 'done' AND seconds > 0 "
            "AND iterations > 0 ORDER BY finished_at DESC, rowid DESC LIMIT ?",
            (sample,),
        ) as cursor:
            rows = await cursor.fetchall()
        if not rows:
            return None
        return statistics.median(float(seconds) / int(iters) for seconds, iters in rows)

    # ------------------------------------------------------------------ queue notes

    async def save_queue_note(self, job_id: str, note: QueueNote) -> None:
        """Remember what the job's message now says about its place (`bot.queue_notes`)."""
        await self._db.execute(
            "INSERT OR REPLACE INTO queue_notes (job_id, position, ready_at, engine_down) "
            "VALUES (?, ?, ?, ?)",
            (normalize_job_id(job_id), note.position, note.ready_at, int(note.engine_down)),
        )

    async def queue_notes(self, job_ids: list[str]) -> dict[str, QueueNote]:
        """The saved notes of these jobs (those that have one)."""
        if not job_ids:
            return {}
        marks = ", ".join("?" for _ in job_ids)
        async with self._db.execute(
            f"SELECT job_id, position, ready_at, engine_down FROM queue_notes "
            f"WHERE job_id IN ({marks})", job_ids,
        ) as cursor:
            rows = await cursor.fetchall()
        return {job_id: QueueNote(position, ready_at, bool(down))
                for job_id, position, ready_at, down in rows}

    # ------------------------------------------------------------------ quota settings

    async def get_quota_override(self, guild_id: int, user_id: int) -> QuotaLimit | None:
        """The user's own quota in this guild, or None if none is set."""
        async with self._db.execute(
            "SELECT daily_limit FROM quota_overrides WHERE guild_id = ? AND user_id = ?",
            (guild_id, user_id),
        ) as cursor:
            row = await cursor.fetchone()
        return QuotaLimit(row[0]) if row is not None else None

    async def set_quota_override(self, guild_id: int, user_id: int, limit: int | None) -> None:
        """Give a user their own daily quota in a guild (None = unlimited, 0 = none at all)."""
        _check_limit(limit)
        await self._db.execute(
            "INSERT INTO quota_overrides (guild_id, user_id, daily_limit) VALUES (?, ?, ?) "
            "ON CONFLICT (guild_id, user_id) DO UPDATE SET daily_limit = excluded.daily_limit",
            (guild_id, user_id, limit),
        )

    async def reset_quota_override(self, guild_id: int, user_id: int) -> bool:
        """Remove a user's override; True if there was one."""
        cursor = await self._db.execute(
            "DELETE FROM quota_overrides WHERE guild_id = ? AND user_id = ?",
            (guild_id, user_id),
        )
        return cursor.rowcount > 0

    async def list_quota_overrides(self, guild_id: int) -> dict[int, int | None]:
        """user id -> limit (None = unlimited) for every override in the guild."""
        async with self._db.execute(
            "SELECT user_id, daily_limit FROM quota_overrides WHERE guild_id = ? ORDER BY user_id",
            (guild_id,),
        ) as cursor:
            rows = await cursor.fetchall()
        return {int(user_id): limit for user_id, limit in rows}

    async def add_unlimited_role(self, guild_id: int, role_id: int) -> bool:
        """Members with this role have no quota (unless overridden); True if newly added."""
        cursor = await self._db.execute(
            "INSERT OR IGNORE INTO unlimited_roles (guild_id, role_id) VALUES (?, ?)",
            (guild_id, role_id),
        )
        return cursor.rowcount > 0

    async def remove_unlimited_role(self, guild_id: int, role_id: int) -> bool:
        """True if the role was unlimited."""
        cursor = await self._db.execute(
            "DELETE FROM unlimited_roles WHERE guild_id = ? AND role_id = ?", (guild_id, role_id)
        )
        return cursor.rowcount > 0

    async def list_unlimited_roles(self, guild_id: int) -> list[int]:
        """The guild's unlimited role ids, sorted."""
        async with self._db.execute(
            "SELECT role_id FROM unlimited_roles WHERE guild_id = ? ORDER BY role_id", (guild_id,)
        ) as cursor:
            rows = await cursor.fetchall()
        return [int(row[0]) for row in rows]

    async def get_guild_default_quota(self, guild_id: int) -> QuotaLimit | None:
        """The guild's own default quota, or None if it uses the configured default."""
        async with self._db.execute(
            "SELECT default_quota_set, default_daily_quota FROM guild_settings WHERE guild_id = ?",
            (guild_id,),
        ) as cursor:
            row = await cursor.fetchone()
        if row is None or not row[0]:
            return None
        return QuotaLimit(row[1])

    async def set_guild_default_quota(self, guild_id: int, limit: int | None) -> None:
        """Set the guild's default daily quota (None = unlimited, 0 = nobody by default)."""
        _check_limit(limit)
        await self._db.execute(
            "INSERT INTO guild_settings (guild_id, default_quota_set, default_daily_quota) "
            "VALUES (?, 1, ?) ON CONFLICT (guild_id) DO UPDATE SET "
            "default_quota_set = 1, default_daily_quota = excluded.default_daily_quota",
            (guild_id, limit),
        )

    async def reset_guild_default_quota(self, guild_id: int) -> bool:
        """Go back to the configured default; True if the guild had its own."""
        cursor = await self._db.execute(
            "UPDATE guild_settings SET default_quota_set = 0, default_daily_quota = NULL "
            "WHERE guild_id = ? AND default_quota_set = 1",
            (guild_id,),
        )
        return cursor.rowcount > 0

    # ------------------------------------------------------------------ blocklist (/blocklist)

    async def list_blocked_terms(self, guild_id: int) -> dict[str, str]:
        """The server's blocked entries, match key -> the term as typed, by key."""
        async with self._db.execute(
            "SELECT folded, term FROM blocked_terms WHERE guild_id = ? ORDER BY folded",
            (guild_id,),
        ) as cursor:
            rows = await cursor.fetchall()
        return {str(folded): str(term) for folded, term in rows}

    async def add_blocked_term(
        self, guild_id: int, key: str, term: str, *, added_by: int, max_terms: int
    ) -> AddOutcome:
        """Block `term` (match key `key`) unless its key is there or the server has
        `max_terms` entries. One statement, so the bound holds whatever runs beside it."""
        if not key:
            raise ValueError("a blocked term needs a non-empty key")
        cursor = await self._db.execute(
            "INSERT INTO blocked_terms (guild_id, folded, term, added_by, added_at) "
            "SELECT ?, ?, ?, ?, ? WHERE (SELECT COUNT(*) FROM blocked_terms WHERE guild_id = ?) < ? "
            "ON CONFLICT (guild_id, folded) DO NOTHING",
            (guild_id, key, term, added_by, self.clock(), guild_id, max_terms),
        )
        if cursor.rowcount > 0:
            return AddOutcome.ADDED
        async with self._db.execute(
            "SELECT 1 FROM blocked_terms WHERE guild_id = ? AND folded = ?", (guild_id, key)
        ) as found:
            return AddOutcome.ALREADY if await found.fetchone() is not None else AddOutcome.FULL

    async def remove_blocked_term(self, guild_id: int, key: str) -> str | None:
        """Unblock the entry with this key; the term as it was typed, or None if none."""
        async with self._db.execute(
            "SELECT term FROM blocked_terms WHERE guild_id = ? AND folded = ?", (guild_id, key)
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return None
        await self._db.execute(
            "DELETE FROM blocked_terms WHERE guild_id = ? AND folded = ?", (guild_id, key)
        )
        return str(row[0])

    # ------------------------------------------------------------------ member defaults (/settings)

    async def get_member_settings(self, guild_id: int | None, user_id: int) -> MemberSettings:
        """The member's own defaults in this server (all None when they set none, and
        outside a server, where nobody can set any)."""
        if guild_id is None:
            return MemberSettings()
        async with self._db.execute(
            "SELECT shape, iterations FROM member_settings WHERE guild_id = ? AND user_id = ?",
            (guild_id, user_id),
        ) as cursor:
            row = await cursor.fetchone()
        return MemberSettings(row[0], row[1]) if row is not None else MemberSettings()

    async def update_member_settings(self, guild_id: int, user_id: int, **changes: Any) -> MemberSettings:
        """Set the given fields of the member's defaults (`shape=...`, `iterations=...`;
        None clears one) and keep the others; returns the result."""
        unknown = set(changes) - {f.name for f in fields(MemberSettings)}
        if unknown:
            raise TypeError(f"member settings have no field(s) {sorted(unknown)}")
        iterations = changes.get("iterations")
        if iterations is not None and (isinstance(iterations, bool) or iterations < 1):
            raise ValueError(f"iterations must be 1 or more (got {iterations!r})")
        if changes:
            columns = list(changes)
            updates = ", ".join(f"{name} = excluded.{name}" for name in columns)
            await self._db.execute(
                f"INSERT INTO member_settings (guild_id, user_id, {', '.join(columns)}) "
                f"VALUES (?, ?, {', '.join('?' for _ in columns)}) "
                f"ON CONFLICT (guild_id, user_id) DO UPDATE SET {updates}",
                (guild_id, user_id, *changes.values()),
            )
            await self._db.execute(
                "DELETE FROM member_settings WHERE guild_id = ? AND user_id = ? "
                "AND shape IS NULL AND iterations IS NULL",
                (guild_id, user_id),
            )
        return await self.get_member_settings(guild_id, user_id)

    # ------------------------------------------------------------------ figures (/stats)
    # One server's jobs from `since` on; what each figure counts is said where it is
    # computed, `bot.stats`.

    async def images_per_day(self, guild_id: int, since: float) -> dict[int, int]:
        """UTC day number (epoch seconds // 86400) -> images finished that day."""
        async with self._db.execute(
            "SELECT CAST(finished_at / 86400 AS INTEGER) AS day, COUNT(*) FROM jobs "
            "WHERE guild_id = ? AND status = 'done' AND finished_at >= ? GROUP BY day",
            (guild_id, since),
        ) as cursor:
            rows = await cursor.fetchall()
        return {int(day): int(count) for day, count in rows}

    async def top_users(self, guild_id: int, since: float, limit: int) -> list[tuple[int, int]]:
        """(user id, images finished), most first (ties: the lower id), at most `limit`."""
        async with self._db.execute(
            "SELECT user_id, COUNT(*) AS n FROM jobs "
            "WHERE guild_id = ? AND status = 'done' AND finished_at >= ? "
            "GROUP BY user_id ORDER BY n DESC, user_id LIMIT ?",
            (guild_id, since, limit),
        ) as cursor:
            rows = await cursor.fetchall()
        return [(int(user_id), int(count)) for user_id, count in rows]

    async def gpu_seconds(self, guild_id: int, since: float) -> float:
        """Engine time of the jobs that ended since `since` after starting: the engine's
        own `seconds` for a done job, else (failed, cancelled) `finished_at - started_at`."""
        async with self._db.execute(
            "SELECT TOTAL(COALESCE(seconds, finished_at - started_at)) FROM jobs "
            "WHERE guild_id = ? AND finished_at >= ? AND started_at IS NOT NULL",
            (guild_id, since),
        ) as cursor:
            row = await cursor.fetchone()
        return float(row[0]) if row else 0.0

    async def waiting_times(self, guild_id: int, since: float) -> list[float]:
        """`started_at - created_at` of the jobs that started since `since`, ascending."""
        async with self._db.execute(
            "SELECT started_at - created_at AS wait FROM jobs "
            "WHERE guild_id = ? AND started_at >= ? ORDER BY wait",
            (guild_id, since),
        ) as cursor:
            rows = await cursor.fetchall()
        return [max(0.0, float(row[0])) for row in rows]

    async def running_times(self, guild_id: int, since: float) -> list[float]:
        """`finished_at - started_at` of the images finished since `since`, ascending."""
        async with self._db.execute(
            "SELECT finished_at - started_at AS run FROM jobs WHERE guild_id = ? "
            "AND status = 'done' AND finished_at >= ? AND started_at IS NOT NULL ORDER BY run",
            (guild_id, since),
        ) as cursor:
            rows = await cursor.fetchall()
        return [max(0.0, float(row[0])) for row in rows]

    async def failure_counts(self, guild_id: int, since: float) -> list[tuple[str | None, int]]:
        """(failure kind, jobs) of the jobs that failed since `since`, most first. The kind
        is `Job.failure` (an `engine.protocol.FAIL_*` reason or `FAIL_INPUT_MISSING`);
        None for failures recorded before kinds were kept."""
        async with self._db.execute(
            "SELECT failure, COUNT(*) AS n FROM jobs "
            "WHERE guild_id = ? AND status = 'failed' AND finished_at >= ? "
            "GROUP BY failure ORDER BY n DESC, failure",
            (guild_id, since),
        ) as cursor:
            rows = await cursor.fetchall()
        return [(None if kind is None else str(kind), int(count)) for kind, count in rows]


__all__ = [
    "MIGRATIONS",
    "AddOutcome",
    "MemberSettings",
    "SCHEMA_VERSION",
    "Clock",
    "JobNotFound",
    "JobStateError",
    "QuotaLimit",
    "Store",
    "StoreError",
]
