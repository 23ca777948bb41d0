"""`/stats` (issue 11 item 9): the figures, from a store on a hand-moved clock holding jobs
at known times, and the command through SimCord (admins only, private)."""

from __future__ import annotations

import pytest

from bot.jobs import Job, JobKind, JobStatus
from bot.render import stat_duration
from bot.stats import DAY, Spread, guild_stats, spread, window_start
from bot.store import Store
from tests.bot.conftest import FakeClock
from engine import protocol
from tests.bot.fake_engine import World, running_world

GUILD = 1001
OTHER_GUILD = 1002
CHANNEL = 2002
ALICE, BOB, CAROL = 3003, 4004, 5005
#: Tuesday 2023-11-14 12:00 UTC: the window is Wednesday 2023-11-08 .. today.
NOW = 1_699_963_200.0
TODAY = NOW - NOW % DAY


async def job_at(store: Store, clock: FakeClock, *, created: float, started: float | None = None,
                 finished: float | None = None, status: JobStatus = JobStatus.DONE,
                 user_id: int = ALICE, guild_id: int = GUILD, seconds: float | None = None,
                 error: str = "out of memory", failure: str | None = "out_of_memory") -> Job:
    """A job queued at `created`, started at `started` and ended at `finished` with
    `status` (done jobs report `seconds`, by default their running time)."""
    clock.now = created
    job = await store.add_job(guild_id=guild_id, channel_id=CHANNEL, user_id=user_id,
                              kind=JobKind.IMAGINE, prompt="p", iterations=10)
    if started is not None:
        clock.now = started
        job = await store.mark_running(job.id)
    if finished is None:
        return job
    clock.now = finished
    if status is JobStatus.DONE:
        assert started is not None
        return await store.mark_done(job.id, result_path="r.png", seed=1,
                                     seconds=finished - started if seconds is None else seconds)
    if status is JobStatus.FAILED:
        return await store.mark_failed(job.id, error, failure=failure)
    return await store.mark_cancelled(job.id)


async def done(store: Store, clock: FakeClock, finished: float, *, wait: float = 10.0,
               run: float = 60.0, **options: object) -> Job:
    return await job_at(store, clock, created=finished - run - wait, started=finished - run,
                        finished=finished, **options)  # type: ignore[arg-type]


# --- the window and the spread ------------------------------------------------------------


def test_the_window_is_seven_utc_days_ending_today() -> None:
    assert window_start(NOW) == TODAY - 6 * DAY
    assert window_start(TODAY) == TODAY - 6 * DAY


def test_spread_of_nothing_one_and_many_values() -> None:
    assert spread([]) == Spread(0, None, None)
    assert spread([7.0]) == Spread(1, 7.0, 7.0)
    values = [float(v) for v in range(1, 101)]  # 1 .. 100
    result = spread(values)
    assert result.count == 100 and result.median == 50.5
    assert result.p95 == pytest.approx(95.05)


def test_the_95th_percentile_is_never_beyond_the_largest_value() -> None:
    assert spread([1.0, 1000.0]).p95 == pytest.approx(950.05)


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "-"), (0.4, "under 1 s"), (42.4, "42 s"), (95, "1 min 35 s"), (120.2, "2 min"),
    (7500, "2 h 5 min"), (7190, "2 h"),
])
def test_durations_are_shown_as_measured_not_rounded_up(seconds: float | None, text: str) -> None:
    assert stat_duration(seconds) == text


# --- the figures --------------------------------------------------------------------------


async def test_images_per_day_counts_done_jobs_by_utc_day_every_day_listed(store: Store, clock: FakeClock) -> None:
    await done(store, clock, TODAY + 60)
    await done(store, clock, TODAY + 120)
    await done(store, clock, TODAY - 1)  # 23:59:59 yesterday
    await done(store, clock, TODAY - 6 * DAY + 5)  # the window's first day
    clock.now = NOW

    stats = await guild_stats(store, GUILD, NOW)

    assert [day for day, _count in stats.per_day] == [TODAY - i * DAY for i in range(6, -1, -1)]
    assert [count for _day, count in stats.per_day] == [1, 0, 0, 0, 0, 1, 2]
    assert stats.images == 4


async def test_jobs_before_the_window_of_other_servers_or_not_done_are_not_images(
    store: Store, clock: FakeClock
) -> None:
    await done(store, clock, TODAY - 6 * DAY - 1)  # just before the window
    await done(store, clock, TODAY + 60, guild_id=OTHER_GUILD)
    await job_at(store, clock, created=TODAY, started=TODAY + 1, finished=TODAY + 2, status=JobStatus.FAILED)
    await job_at(store, clock, created=TODAY, started=TODAY + 1, finished=TODAY + 2, status=JobStatus.CANCELLED)
    await job_at(store, clock, created=TODAY, started=TODAY + 1)  # still running

    stats = await guild_stats(store, GUILD, NOW)

    assert stats.images == 0 and stats.top_users == ()


async def test_top_users_are_the_members_with_most_images_first(store: Store, clock: FakeClock) -> None:
    for user_id, images in ((ALICE, 1), (BOB, 3), (CAROL, 2)):
        for i in range(images):
            await done(store, clock, TODAY + 100 * i, user_id=user_id)
    await job_at(store, clock, created=TODAY, started=TODAY + 1, finished=TODAY + 2,
                 status=JobStatus.FAILED, user_id=ALICE)

    stats = await guild_stats(store, GUILD, NOW)

    assert stats.top_users == ((BOB, 3), (CAROL, 2), (ALICE, 1))


async def test_gpu_time_adds_engine_seconds_and_the_run_time_of_failed_and_cancelled_jobs(
    store: Store, clock: FakeClock
) -> None:
    await done(store, clock, TODAY + 500, run=100, seconds=90)  # the engine's own 90 s
    await job_at(store, clock, created=TODAY, started=TODAY + 10, finished=TODAY + 40, status=JobStatus.FAILED)
    await job_at(store, clock, created=TODAY, started=TODAY + 10, finished=TODAY + 30, status=JobStatus.CANCELLED)
    await job_at(store, clock, created=TODAY, finished=TODAY + 5, status=JobStatus.CANCELLED)  # never ran
    await done(store, clock, TODAY - 7 * DAY, run=1000)  # before the window

    stats = await guild_stats(store, GUILD, NOW)

    assert stats.gpu_seconds == pytest.approx(90 + 30 + 20)


async def test_waiting_and_running_times_give_median_and_95th_percentile(store: Store, clock: FakeClock) -> None:
    for i in range(1, 21):  # waits 1..20 s, runs 10..200 s
        await done(store, clock, TODAY + 1000 * i, wait=float(i), run=10.0 * i)
    # Started (so it waited) but still running: a wait, no running time.
    await job_at(store, clock, created=TODAY + 50_000, started=TODAY + 50_100)

    stats = await guild_stats(store, GUILD, NOW)

    assert stats.waiting == Spread(21, 11.0, pytest.approx(20.0))
    assert stats.running == Spread(20, 105.0, pytest.approx(190.5))


async def test_failures_are_grouped_by_kind_most_first_then_other(store: Store, clock: FakeClock) -> None:
    kinds = {"crash": 3, "out_of_memory": 2, "a": 1, "b": 1, "c": 1, "d": 1, "e": 1}
    for kind, count in kinds.items():
        for i in range(count):
            await job_at(store, clock, created=TODAY, started=TODAY + 1, finished=TODAY + 2,
                         status=JobStatus.FAILED, error=f"worded differently {i}", failure=kind)
    await job_at(store, clock, created=TODAY, finished=TODAY + 1, status=JobStatus.FAILED,
                 failure="crash", guild_id=OTHER_GUILD)

    stats = await guild_stats(store, GUILD, NOW)

    assert stats.failed == 10
    assert stats.failures == (("crash", 3), ("out_of_memory", 2), ("a", 1), ("b", 1), ("c", 1))


async def test_failures_recorded_without_a_kind_are_counted_as_not_recorded(
    store: Store, clock: FakeClock
) -> None:
    await job_at(store, clock, created=TODAY, finished=TODAY + 1, status=JobStatus.FAILED, failure=None)

    stats = await guild_stats(store, GUILD, NOW)

    assert stats.failures == ((None, 1),)


async def test_a_server_without_jobs_has_empty_figures(store: Store) -> None:
    stats = await guild_stats(store, GUILD, NOW)

    assert stats.images == 0 and len(stats.per_day) == 7
    assert stats.waiting == stats.running == Spread(0, None, None)
    assert (stats.gpu_seconds, stats.failed, stats.failures) == (0.0, 0, ())


# --- /stats --------------------------------------------------------------------------------


async def stats_fields(world: World) -> dict[str, str]:
    result = await world.mod.slash(world.channel, "stats")
    assert result.response is not None and result.response.ephemeral
    (embed,) = result.response.embeds
    return {field.name: field.value for field in embed.fields}


async def test_stats_is_offered_to_admins_only() -> None:
    async with running_world() as world:
        assert "stats" in world.mod.available_commands(world.channel)
        assert "stats" not in world.alice.available_commands(world.channel)


async def test_stats_refuses_a_member_granted_the_command_by_the_owner() -> None:
    async with running_world() as world:
        command = next(c for c in world.bot.synced_commands if c.name == "stats")
        world.guild.set_command_permissions(command, {world.alice: True})

        result = await world.alice.slash(world.channel, "stats")

        assert result.response is not None and result.response.ephemeral
        assert "Manage Server" in result.response.content and not result.response.embeds


async def test_stats_shows_an_admin_the_servers_images_users_and_failures() -> None:
    async with running_world() as world:
        await world.alice.slash(world.channel, "imagine", prompt="one")
        await world.alice.slash(world.channel, "imagine", prompt="two")
        await world.bob.slash(world.channel, "imagine", prompt="three")
        world.engine.fail_with = "out of GPU memory at 64x64; try 48x48"
        world.engine.fail_reason = protocol.FAIL_OUT_OF_MEMORY
        await world.bob.slash(world.channel, "imagine", prompt="four")
        await world.env.settle()

        fields = await stats_fields(world)

        assert "Images per day (UTC): 3 in all" in fields
        chart = fields["Images per day (UTC): 3 in all"]
        assert chart.startswith("```") and chart.count("\n") == 8  # 7 days in a code block
        assert fields["Top members"] == (f"1. <@{world.alice.id}>: 2 images\n"
                                         f"2. <@{world.bob.id}>: 1 image")
        assert fields["Failures: 1"] == "1 × out of memory"
        assert "(3 images)" in fields["Running (started → done)"]
        assert "(4 jobs started)" in fields["Waiting (queued → started)"]
        assert fields["GPU time"].endswith(" min")


async def test_stats_of_a_quiet_server_says_so() -> None:
    async with running_world() as world:
        fields = await stats_fields(world)

        assert fields["Top members"] == "nobody yet"
        assert fields["Failures: 0"] == "none"
        assert fields["Waiting (queued → started)"] == "no jobs started yet"
