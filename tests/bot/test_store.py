"""The SQLite store: jobs round trip, status transitions, restart, usage, quota settings."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bot.jobs import ENGINE_DOWN_NOTE, Job, JobKind, JobStatus, QueueNote
from bot.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    JobNotFound,
    JobStateError,
    QuotaLimit,
    Store,
    StoreError,
)
from tests.bot.conftest import FakeClock

GUILD = 1001
CHANNEL = 2002
ALICE = 3003
BOB = 4004
DAY = 24 * 60 * 60


async def add(store: Store, user_id: int = ALICE, **overrides) -> Job:
    fields = dict(
        guild_id=GUILD,
        channel_id=CHANNEL,
        user_id=user_id,
        kind=JobKind.IMAGINE,
        prompt="a forest rendered in low poly",
        iterations=400,
        params={"size": [512, 512], "cutn": 32, "seed": None},
    )
    fields.update(overrides)
    return await store.add_job(**fields)


# ---------------------------------------------------------------- opening


async def test_open_creates_missing_directories_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "bot.sqlite3"
    store = await Store.open(path)
    await store.close()
    assert path.exists()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_new_database_is_at_current_schema_version(store: Store) -> None:
    assert await store.schema_version() == SCHEMA_VERSION >= 1


async def test_reopening_keeps_data_and_does_not_migrate_again(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "bot.sqlite3"
    first = await Store.open(path, clock=clock)
    job = await add(first)
    await first.close()
    second = await Store.open(path, clock=clock)
    try:
        assert await second.get_job(job.id) == job
        assert await second.schema_version() == SCHEMA_VERSION
    finally:
        await second.close()


async def test_a_database_from_before_timelapses_keeps_its_jobs_and_gains_their_message(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bot.sqlite3"
    before = next(i for i, script in enumerate(MIGRATIONS) if "timelapse_message_id" in script)
    with sqlite3.connect(path) as db:
        for script in MIGRATIONS[:before]:
            db.executescript(script)
        db.execute("INSERT INTO jobs (id, channel_id, user_id, kind, prompt, iterations, status, "
                   "created_at) VALUES ('old', 1, 2, 'imagine', 'a fox', 10, 'done', 0)")
        db.execute(f"PRAGMA user_version = {before}")
    store = await Store.open(path)
    try:
        assert (await store.get_job("old")).timelapse_message_id is None
        job = await store.update_job("old", timelapse_message_id=77)
        assert job.timelapse_message_id == 77 and await store.schema_version() == SCHEMA_VERSION
    finally:
        await store.close()


async def test_database_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer"):
        await Store.open(path)


# ---------------------------------------------------------------- jobs


async def test_added_job_round_trips_with_all_fields(store: Store, clock: FakeClock) -> None:
    job = await add(
        store,
        kind=JobKind.EDIT,
        params={"size": [640, 384], "replace": "flowers", "nested": {"a": [1, 2]}},
        input_path="inputs/abc.png",
        parent_id="parentid",
    )
    loaded = await store.get_job(job.id)
    assert loaded == job
    assert loaded is not None
    assert loaded.status is JobStatus.QUEUED
    assert loaded.created_at == clock.now
    assert loaded.params == {"size": [640, 384], "replace": "flowers", "nested": {"a": [1, 2]}}
    assert loaded.input_path == "inputs/abc.png"
    assert loaded.kind == "edit"
    assert loaded.iterations == 400


async def test_job_ids_are_short_lowercase_base32_and_unique(store: Store) -> None:
    ids = {(await add(store)).id for _ in range(50)}
    assert len(ids) == 50
    alphabet = set("abcdefghijklmnopqrstuvwxyz234567")
    assert all(len(i) == 8 and set(i) <= alphabet for i in ids)


async def test_get_job_accepts_the_id_as_a_user_types_it(store: Store) -> None:
    job = await add(store)
    assert await store.get_job(f"  {job.id.upper()} ") == job


async def test_get_unknown_job_is_none(store: Store) -> None:
    assert await store.get_job("zzzzzzzz") is None


async def test_id_collision_draws_a_new_id(store: Store, monkeypatch) -> None:
    taken = await add(store)
    ids = iter([taken.id, "fresh234"])
    monkeypatch.setattr("bot.store.new_job_id", lambda: next(ids))
    job = await add(store)
    assert job.id == "fresh234"


async def test_update_job_sets_fields(store: Store) -> None:
    job = await add(store)
    updated = await store.update_job(job.id, progress_message_id=555, params={"seed": 7})
    assert updated.progress_message_id == 555
    assert updated.params == {"seed": 7}
    assert (await store.get_job(job.id)) == updated


async def test_update_job_rejects_unknown_fields(store: Store) -> None:
    job = await add(store)
    with pytest.raises(TypeError, match="colour"):
        await store.update_job(job.id, colour="red")


async def test_update_missing_job_raises_job_not_found(store: Store) -> None:
    with pytest.raises(JobNotFound):
        await store.update_job("nosuchjb", progress_message_id=1)


async def test_running_then_done_records_result_and_timestamps(
    store: Store, clock: FakeClock
) -> None:
    job = await add(store)
    clock.advance(10)
    running = await store.mark_running(job.id)
    assert running.status is JobStatus.RUNNING
    assert running.started_at == clock.now
    clock.advance(30)
    done = await store.mark_done(
        job.id, result_path="results/x.png", seed=42, seconds=29.5, iterations=380,
        result_message_id=777,
    )
    assert done.status is JobStatus.DONE
    assert done.finished_at == clock.now
    assert (done.result_path, done.seed, done.seconds, done.iterations) == (
        "results/x.png", 42, 29.5, 380
    )
    assert done.result_message_id == 777


async def test_failed_job_keeps_its_error(store: Store) -> None:
    job = await add(store)
    await store.mark_running(job.id)
    failed = await store.mark_failed(job.id, "out of GPU memory at 1024x1024; try 640x640")
    assert failed.status is JobStatus.FAILED
    assert failed.error == "out of GPU memory at 1024x1024; try 640x640"
    assert failed.finished_at is not None


async def test_queued_job_can_be_cancelled(store: Store) -> None:
    job = await add(store)
    assert (await store.mark_cancelled(job.id)).status is JobStatus.CANCELLED


async def test_done_job_cannot_be_cancelled(store: Store) -> None:
    job = await add(store)
    await store.mark_running(job.id)
    await store.mark_done(job.id, result_path="r.png", seed=1, seconds=1.0)
    with pytest.raises(JobStateError) as caught:
        await store.mark_cancelled(job.id)
    assert caught.value.current is JobStatus.DONE
    assert (await store.get_job(job.id)).status is JobStatus.DONE


async def test_queued_job_cannot_be_marked_done(store: Store) -> None:
    job = await add(store)
    with pytest.raises(JobStateError):
        await store.mark_done(job.id, result_path="r.png", seed=1, seconds=1.0)


async def test_running_job_cannot_start_again(store: Store) -> None:
    job = await add(store)
    await store.mark_running(job.id)
    with pytest.raises(JobStateError):
        await store.mark_running(job.id)


async def test_transition_of_missing_job_raises_job_not_found(store: Store) -> None:
    with pytest.raises(JobNotFound):
        await store.mark_running("nosuchjb")


async def test_jobs_with_status_filters_and_keeps_creation_order(store: Store) -> None:
    a = await add(store)
    b = await add(store, user_id=BOB)  # same timestamp: insertion order breaks the tie
    c = await add(store)
    await store.mark_cancelled(b.id)
    assert [j.id for j in await store.jobs_with_status(JobStatus.QUEUED)] == [a.id, c.id]
    assert [j.id for j in await store.jobs_with_status("cancelled")] == [b.id]
    assert [j.id for j in await store.jobs_with_status()] == [a.id, b.id, c.id]
    assert [j.id for j in await store.jobs_with_status(user_id=BOB)] == [b.id]


async def test_requeue_running_returns_interrupted_jobs_to_the_queue(
    store: Store, clock: FakeClock
) -> None:
    first = await add(store)
    clock.advance(1)
    second = await add(store)
    done = await add(store)
    await store.mark_running(done.id)
    await store.mark_done(done.id, result_path="r.png", seed=1, seconds=1.0)
    await store.mark_running(second.id)
    await store.mark_running(first.id)
    await store.update_job(first.id, progress_message_id=99)

    requeued = await store.requeue_running()

    assert [j.id for j in requeued] == [first.id, second.id]
    assert all(j.status is JobStatus.QUEUED and j.started_at is None for j in requeued)
    assert requeued[0].progress_message_id == 99
    assert (await store.get_job(done.id)).status is JobStatus.DONE
    assert await store.jobs_with_status(JobStatus.RUNNING) == []


async def test_requeue_running_with_nothing_running_is_empty(store: Store) -> None:
    await add(store)
    assert await store.requeue_running() == []


async def test_latest_done_job_in_channel(store: Store, clock: FakeClock) -> None:
    older, newer, other_channel = await add(store), await add(store), await add(
        store, channel_id=CHANNEL + 1
    )
    for job in (older, newer, other_channel):
        clock.advance(5)
        await store.mark_running(job.id)
        await store.mark_done(job.id, result_path=f"{job.id}.png", seed=1, seconds=1.0)
    await add(store)  # queued: not an image yet
    latest = await store.latest_done_job(CHANNEL)
    assert latest is not None and latest.id == newer.id


async def test_job_by_result_message(store: Store) -> None:
    job = await add(store)
    await store.update_job(job.id, result_message_id=123456789012345678)
    found = await store.job_by_result_message(123456789012345678)
    assert found is not None and found.id == job.id
    assert await store.job_by_result_message(1) is None


# ---------------------------------------------------------------- usage


async def _finish(store: Store, job: Job, status: JobStatus) -> None:
    if status is JobStatus.QUEUED:
        return
    if status is JobStatus.CANCELLED:
        await store.mark_cancelled(job.id)
        return
    await store.mark_running(job.id)
    if status is JobStatus.DONE:
        await store.mark_done(job.id, result_path="r.png", seed=1, seconds=1.0)
    elif status is JobStatus.FAILED:
        await store.mark_failed(job.id, "engine crashed")


async def test_usage_counts_queued_running_done_but_not_failed_or_cancelled(
    store: Store, clock: FakeClock
) -> None:
    for status in JobStatus:
        await _finish(store, await add(store), status)
    assert await store.count_charged_jobs(GUILD, ALICE, clock.now - DAY) == 3


async def test_usage_is_per_guild_and_per_user(store: Store, clock: FakeClock) -> None:
    await add(store)
    await add(store, user_id=BOB)
    await add(store, guild_id=GUILD + 1)
    await add(store, guild_id=None)  # a DM
    assert await store.count_charged_jobs(GUILD, ALICE, clock.now - DAY) == 1
    assert await store.count_charged_jobs(None, ALICE, clock.now - DAY) == 1


async def test_usage_ignores_jobs_created_before_since(store: Store, clock: FakeClock) -> None:
    await add(store)
    clock.advance(DAY)
    await add(store)
    # The first job was created exactly at `since`: it has aged out.
    assert await store.count_charged_jobs(GUILD, ALICE, clock.now - DAY) == 1


async def test_oldest_charged_job_time_skips_uncharged_and_old_jobs(
    store: Store, clock: FakeClock
) -> None:
    start = clock.now
    await add(store)  # too old for the window below
    clock.advance(100)
    cancelled = await add(store)
    await store.mark_cancelled(cancelled.id)
    clock.advance(100)
    await add(store)
    clock.advance(100)
    await add(store)
    since = start + 50
    assert await store.oldest_charged_job_time(GUILD, ALICE, since) == start + 200
    assert await store.oldest_charged_job_time(GUILD, ALICE, since, skip=1) == start + 300
    assert await store.oldest_charged_job_time(GUILD, ALICE, since, skip=2) is None


async def test_seconds_per_iteration_is_none_without_done_jobs(store: Store) -> None:
    await add(store)
    assert await store.seconds_per_iteration_estimate() is None


async def test_seconds_per_iteration_is_the_median_of_recent_done_jobs(
    store: Store, clock: FakeClock
) -> None:
    for seconds, iterations in [(40.0, 400), (10.0, 50), (1000.0, 100), (30.0, 300)]:
        job = await add(store, iterations=iterations)
        clock.advance(1)
        await store.mark_running(job.id)
        await store.mark_done(job.id, result_path="r.png", seed=1, seconds=seconds)
    # per iteration: 0.1, 0.2, 10.0, 0.1 -> median 0.15; the outlier doesn't drag it.
    assert await store.seconds_per_iteration_estimate() == pytest.approx(0.15)
    # only the most recent job (0.1 s/it) in a sample of one
    assert await store.seconds_per_iteration_estimate(sample=1) == pytest.approx(0.1)


# ---------------------------------------------------------------- quota settings


async def test_quota_override_set_get_reset(store: Store) -> None:
    assert await store.get_quota_override(GUILD, ALICE) is None
    await store.set_quota_override(GUILD, ALICE, 20)
    assert await store.get_quota_override(GUILD, ALICE) == QuotaLimit(20)
    await store.set_quota_override(GUILD, ALICE, 5)
    assert await store.get_quota_override(GUILD, ALICE) == QuotaLimit(5)
    assert await store.get_quota_override(GUILD + 1, ALICE) is None
    assert await store.reset_quota_override(GUILD, ALICE) is True
    assert await store.reset_quota_override(GUILD, ALICE) is False
    assert await store.get_quota_override(GUILD, ALICE) is None


async def test_unlimited_override_differs_from_no_override(store: Store) -> None:
    await store.set_quota_override(GUILD, ALICE, None)
    override = await store.get_quota_override(GUILD, ALICE)
    assert override is not None and override.unlimited


async def test_list_quota_overrides(store: Store) -> None:
    await store.set_quota_override(GUILD, BOB, None)
    await store.set_quota_override(GUILD, ALICE, 0)
    await store.set_quota_override(GUILD + 1, ALICE, 3)
    assert await store.list_quota_overrides(GUILD) == {ALICE: 0, BOB: None}


async def test_negative_quota_is_rejected(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.set_quota_override(GUILD, ALICE, -1)
    with pytest.raises(ValueError):
        await store.set_guild_default_quota(GUILD, -5)


async def test_unlimited_roles_add_remove_list(store: Store) -> None:
    assert await store.add_unlimited_role(GUILD, 30) is True
    assert await store.add_unlimited_role(GUILD, 10) is True
    assert await store.add_unlimited_role(GUILD, 30) is False
    await store.add_unlimited_role(GUILD + 1, 99)
    assert await store.list_unlimited_roles(GUILD) == [10, 30]
    assert await store.remove_unlimited_role(GUILD, 30) is True
    assert await store.remove_unlimited_role(GUILD, 30) is False
    assert await store.list_unlimited_roles(GUILD) == [10]


async def test_guild_default_quota_set_get_reset(store: Store) -> None:
    assert await store.get_guild_default_quota(GUILD) is None
    await store.set_guild_default_quota(GUILD, 10)
    assert await store.get_guild_default_quota(GUILD) == QuotaLimit(10)
    await store.set_guild_default_quota(GUILD, None)
    assert await store.get_guild_default_quota(GUILD) == QuotaLimit(None)
    assert await store.reset_guild_default_quota(GUILD) is True
    assert await store.get_guild_default_quota(GUILD) is None
    assert await store.reset_guild_default_quota(GUILD) is False


# ---------------------------------------------------------------- issue 11 items 4-6


async def test_a_failed_job_keeps_the_kind_of_its_failure(store: Store) -> None:
    job = await add(store)
    await store.mark_running(job.id)
    failed = await store.mark_failed(job.id, "the engine crashed", failure="crash")
    assert (failed.error, failed.failure) == ("the engine crashed", "crash")
    assert (await store.get_job(job.id)).failure == "crash"


async def test_job_by_message_finds_a_job_by_its_progress_or_its_result_message(store: Store) -> None:
    running = await store.update_job((await add(store)).id, progress_message_id=11)
    done = await store.update_job((await add(store)).id, progress_message_id=21, result_message_id=22)
    assert (await store.job_by_message(11)).id == running.id
    assert (await store.job_by_message(21)).id == done.id
    assert (await store.job_by_message(22)).id == done.id
    assert await store.job_by_message(99) is None


async def test_recent_jobs_lists_unfinished_ones_first_then_the_newest(
    store: Store, clock: FakeClock
) -> None:
    ids = []
    for _ in range(4):
        ids.append((await add(store)).id)
        clock.advance(10)
    await add(store, user_id=BOB)
    await add(store, guild_id=GUILD + 1)
    for job_id in ids[1:]:  # the oldest stays queued; the others end
        await store.mark_cancelled(job_id)
    recent = await store.recent_jobs(GUILD, ALICE, limit=3)
    assert [j.id for j in recent] == [ids[0], ids[3], ids[2]]
    assert await store.count_jobs(GUILD, ALICE) == 4


async def test_a_database_from_before_failure_kinds_gains_the_column_and_keeps_its_jobs(
    tmp_path: Path,
) -> None:
    # The version just before the migration that adds `failure` (found, not numbered:
    # migrations are ordered when branches merge).
    before = next(i for i, script in enumerate(MIGRATIONS) if "ADD COLUMN failure" in script)
    path = tmp_path / "bot.sqlite3"
    with sqlite3.connect(path) as db:
        for script in MIGRATIONS[:before]:
            db.executescript(script)
        db.execute(f"PRAGMA user_version = {before}")
        db.execute("INSERT INTO jobs (id, channel_id, user_id, kind, prompt, iterations, status, "
                   "created_at, error) VALUES ('oldjob', 1, 2, 'imagine', 'p', 10, 'failed', 0, 'x')")
    store = await Store.open(path)
    try:
        assert await store.schema_version() == SCHEMA_VERSION
        old = await store.get_job("oldjob")
        assert old is not None and (old.error, old.failure) == ("x", None)
    finally:
        await store.close()


# ---------------------------------------------------------------- queue notes


async def test_queue_notes_keep_the_last_note_of_each_job(store: Store) -> None:
    first, second, third = [await add(store) for _ in range(3)]
    await store.save_queue_note(first.id, QueueNote(2, 1_700_000_600))
    await store.save_queue_note(first.id, QueueNote(1, 1_700_000_300))
    await store.save_queue_note(second.id, ENGINE_DOWN_NOTE)
    notes = await store.queue_notes([first.id, second.id, third.id])
    assert notes == {first.id: QueueNote(1, 1_700_000_300), second.id: ENGINE_DOWN_NOTE}
    assert await store.queue_notes([]) == {}
