"""Several jobs at once (issue 13): an engine that says `Ready.capacity` N gets up to N jobs,
in the queue's fair order, and each keeps everything a single job has (its message, its
cancel, its result or failure, its charge). Through SimCord, on the fake engine, which
starts jobs by the real engine's batching rule (one size at a time, in the order they came).
"""

from __future__ import annotations

from typing import Any

from bot.jobs import Job, JobStatus
from engine import protocol
from tests.bot.conftest import reply
from tests.bot.fake_engine import FakeEngine, World, running_world, text_of


async def imagine(world: World, member: Any, prompt: str, **options: Any) -> Job:
    result = await member.slash(world.channel, "imagine", prompt=prompt, **options)
    assert "Queued job" in text_of(result), text_of(result)
    return next(job for job in await world.services.store.jobs_with_status() if job.prompt == prompt)


async def now(world: World, job: Job) -> Job:
    stored = await world.services.store.get_job(job.id)
    assert stored is not None
    return stored


def shown(world: World, job: Job) -> str:
    """What the job's one channel message says now (its embed's description)."""
    message = next(m for m in world.bot_messages() if m.id == job.progress_message_id)
    return message.embeds[0].description or ""


async def used(world: World, member: Any) -> int:
    return (await world.services.quotas.check(world.guild.id, member.id)).used


async def test_three_members_jobs_run_at_once_on_an_engine_with_room_for_three() -> None:
    async with running_world(FakeEngine(capacity=3, blocked=True)) as world:
        jobs = [await imagine(world, member, f"by {member.name}")
                for member in (world.alice, world.bob, world.mod)]

        assert world.engine.computing == [job.id for job in jobs]
        assert list(world.services.running) == [job.id for job in jobs]
        assert len(world.services.scheduler) == 0


async def test_a_fourth_job_waits_in_the_queue_until_one_of_three_ends() -> None:
    async with running_world(FakeEngine(capacity=3, blocked=True)) as world:
        first, _, _ = [await imagine(world, member, f"by {member.name}")
                       for member in (world.alice, world.bob, world.mod)]
        fourth = await imagine(world, world.alice, "fourth")
        assert world.services.scheduler.position(fourth.id) == 1
        assert fourth.id not in world.engine.jobs_received

        world.engine.release_job(first.id)
        await world.env.settle()

        assert (await now(world, first)).status is JobStatus.DONE
        assert fourth.id in world.engine.computing


async def test_every_job_of_a_batch_gets_its_own_result_message() -> None:
    async with running_world(FakeEngine(capacity=3, blocked=True)) as world:
        jobs = [await imagine(world, member, f"by {member.name}")
                for member in (world.alice, world.bob, world.mod)]
        assert world.engine.computing == [job.id for job in jobs]

        world.engine.release()
        await world.env.settle()

        finished = [await now(world, job) for job in jobs]
        assert [job.status for job in finished] == [JobStatus.DONE] * 3
        results = {m.id: m for m in world.bot_messages()}
        for job in finished:
            message = results[job.result_message_id]
            assert message.content.startswith(f"<@{job.user_id}>") and message.attachments
        assert [await used(world, m) for m in (world.alice, world.bob, world.mod)] == [1, 1, 1]


async def test_jobs_are_handed_over_in_the_queues_fair_order() -> None:
    async with running_world(FakeEngine(capacity=2, blocked=True)) as world:
        a1 = await imagine(world, world.alice, "a1")
        a2 = await imagine(world, world.alice, "a2")
        a3 = await imagine(world, world.alice, "a3")
        b1 = await imagine(world, world.bob, "b1")

        world.engine.release_job(a1.id)
        await world.env.settle()

        # Bob, never served, goes before alice's third, as with one job at a time.
        assert world.engine.jobs_received == [a1.id, a2.id, b1.id]
        assert world.services.scheduler.position(a3.id) == 1


async def test_cancelling_one_running_job_leaves_the_others_running() -> None:
    async with running_world(FakeEngine(capacity=3, blocked=True)) as world:
        alice, bob, mod = [await imagine(world, member, f"by {member.name}")
                           for member in (world.alice, world.bob, world.mod)]
        message = next(m for m in world.bot_messages() if m.id == bob.progress_message_id)

        await world.bob.click(message, label="Cancel")
        await world.env.settle()

        assert (await now(world, bob)).status is JobStatus.CANCELLED
        assert "Cancelled" in shown(world, bob)
        assert world.engine.computing == [alice.id, mod.id]
        assert list(world.services.running) == [alice.id, mod.id]
        world.engine.release()
        await world.env.settle()
        assert [(await now(world, job)).status for job in (alice, mod)] == [JobStatus.DONE] * 2
        assert await used(world, world.bob) == 0


async def test_a_job_the_engine_holds_for_another_size_reads_starting_and_shows_no_iteration() -> None:
    async with running_world(FakeEngine(capacity=3, blocked=True)) as world:
        await imagine(world, world.alice, "square one")
        other = await imagine(world, world.bob, "a wide one", size="wide")

        assert other.id in world.services.running and other.id not in world.engine.computing
        assert "Starting" in shown(world, other) and "iteration" not in shown(world, other)
        status = await world.mod.slash(world.channel, "status")
        assert status.response is not None
        queue = next(f.value for f in status.response.embeds[0].fields if f.name == "Queue")
        assert f"job `{other.id}`, starting" in queue
        assert "your image “a wide one”: starting" in reply(await world.bob.slash(world.channel, "queue"))


async def test_a_different_size_job_behind_a_stream_of_same_size_jobs_gets_to_run() -> None:
    # Two places; alice and bob keep the engine busy with square images, each asking for
    # another the moment one ends; mod's wide image must still get its turn.
    async with running_world(FakeEngine(capacity=2, blocked=True), max_queued_per_user=2) as world:
        stream = [await imagine(world, world.alice, "square 1"), await imagine(world, world.bob, "square 2")]
        wide = await imagine(world, world.mod, "the wide one", size="wide")
        for round_ in range(3, 9):
            oldest = next(job for job in stream if job.id in world.engine.computing)
            world.engine.release_job(oldest.id)
            await world.env.settle()
            member = world.alice if oldest.user_id == world.alice.id else world.bob
            stream.append(await imagine(world, member, f"square {round_}"))
            if wide.id in world.engine.computing:
                break

        assert wide.id in world.engine.computing
        assert round_ > 3  # it did wait: the squares before it had to drain
        # It started once the squares before it had drained, and no square handed over
        # after it started before it.
        after = world.engine.jobs_received[world.engine.jobs_received.index(wide.id) + 1:]
        started = world.engine.started
        assert all(started.index(job) > started.index(wide.id) for job in after if job in started)
        world.engine.release()
        await world.env.settle()
        assert (await now(world, wide)).status is JobStatus.DONE


async def test_when_the_engine_dies_each_started_job_fails_uncharged_and_the_one_not_started_waits() -> None:
    async with running_world(FakeEngine(capacity=3, blocked=True)) as world:
        alice = await imagine(world, world.alice, "square a")
        bob = await imagine(world, world.bob, "square b")
        held = await imagine(world, world.mod, "a wide one", size="wide")  # waits for the squares
        assert world.engine.computing == [alice.id, bob.id]

        world.engine.go_down()
        await world.catch_up()

        for job in (alice, bob):
            crashed = await now(world, job)
            assert (crashed.status, crashed.failure) == (JobStatus.FAILED, protocol.FAIL_CRASH)
        assert [await used(world, m) for m in (world.alice, world.bob)] == [0, 0]
        assert (await now(world, held)).status is JobStatus.RUNNING
        assert "engine is down" in shown(world, held)

        world.engine.come_back()
        world.engine.release()
        await world.env.settle()
        assert (await now(world, held)).status is JobStatus.DONE


async def test_with_room_for_one_jobs_run_one_at_a_time() -> None:
    async with running_world(FakeEngine(capacity=1, blocked=True)) as world:
        first = await imagine(world, world.alice, "first")
        second = await imagine(world, world.bob, "second")

        assert world.engine.jobs_received == [first.id]
        assert world.services.scheduler.position(second.id) == 1


async def test_an_engine_back_with_room_takes_more_jobs_without_a_new_one_queued() -> None:
    async with running_world(FakeEngine(capacity=2, blocked=True)) as world:
        first = await imagine(world, world.alice, "first")
        await imagine(world, world.bob, "second")
        world.engine.go_down()  # both fail; while it is down one job at most is handed over
        third = await imagine(world, world.alice, "third")
        fourth = await imagine(world, world.bob, "fourth")
        await world.catch_up()
        assert list(world.services.running) == [third.id]
        assert (await now(world, first)).status is JobStatus.FAILED

        world.engine.come_back()
        await world.env.settle()

        assert world.engine.computing == [third.id, fourth.id]
