"""Upgrading a database written by an older release: every migration after the first runs
once, and what the old one held stays."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bot.jobs import JobStatus
from bot.store import MIGRATIONS, SCHEMA_VERSION, AddOutcome, MemberSettings, Store
from tests.bot.conftest import FakeClock


async def test_a_first_version_database_upgrades_keeping_its_jobs_and_quotas(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "bot.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(MIGRATIONS[0])
        db.execute("INSERT INTO jobs (id, guild_id, channel_id, user_id, kind, prompt, iterations, "
                   "status, created_at) VALUES ('oldjob', 1, 2, 3, 'imagine', 'a fox', 10, 'done', 5.0)")
        db.execute("INSERT INTO quota_overrides VALUES (1, 3, 7)")
        db.execute("PRAGMA user_version = 1")

    store = await Store.open(path, clock=clock)
    try:
        assert await store.schema_version() == SCHEMA_VERSION
        job = await store.get_job("oldjob")
        assert job is not None and job.status is JobStatus.DONE and job.prompt == "a fox"
        assert (await store.get_quota_override(1, 3)) is not None
        # The tables of the blocklist and of members' defaults are there, and work.
        assert await store.add_blocked_term(1, "gore", "gore", added_by=3, max_terms=5) is AddOutcome.ADDED
        assert await store.update_member_settings(1, 3, shape="wide") == MemberSettings("wide", None)
    finally:
        await store.close()
