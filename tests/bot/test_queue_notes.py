"""Queue messages stay true (issue 11, item 2), through SimCord with the fake engine.

Whenever the queue moves, every waiting job's message shows its place and expected ready
time, from the same estimate as the queued answer and /queue; a message is edited only when
what it shows changed; edits are paced (`bot.pacing`); and at no moment do two messages
claim the same place. The simulated clock moves only when a test moves it
(`World.catch_up`), so the pace is exact. The real-engine check is in test_e2e.py.
"""

from __future__ import annotations

import asyncio
import datetime
import re
from dataclasses import dataclass
from typing import Any

import discord

from bot.eta import estimate, queue_estimates
from bot.jobs import Job, JobStatus, QueueNote
from bot.pacing import QUEUE_EDIT_WINDOW, QUEUE_EDITS_PER_WINDOW
from bot.queue_notes import ETA_STEP, reads_the_same
from bot.render import ENGINE_DOWN_TEXT, format_duration
from engine import protocol
from tests.bot.fake_engine import FakeEngine, World, running_world, text_of

PLACE = re.compile(r"Waiting in the queue \(#(\d+)\)")
READY = re.compile(r"<t:(\d+):R>")


# --- what the channel shows ------------------------------------------------------------------


def description(body: Any) -> str | None:
    embeds = body.get("embeds") if isinstance(body, dict) else None
    return (embeds[0].get("description") or "") if embeds else None


def claims_over_time(world: World) -> list[dict[int, int]]:
    """After each write of the bot in the channel: message id -> the place it shows."""
    prefix = f"/channels/{world.channel.id}/messages/"
    shown: dict[int, int] = {}
    history = []
    for request in world.env.http_requests:
        if not request.path.startswith(prefix):
            continue
        message_id = int(request.path.removeprefix(prefix).split("/")[0])
        text = description(request.json) if request.method == "PATCH" else None
        place = PLACE.search(text) if text is not None else None
        if place is not None:
            shown[message_id] = int(place[1])
        elif request.method == "DELETE" or text is not None:
            shown.pop(message_id, None)
        history.append(dict(shown))
    return history


def assert_no_place_shown_twice(world: World) -> None:
    for step, shown in enumerate(claims_over_time(world)):
        places = sorted(shown.values())
        assert len(places) == len(set(places)), f"after write {step}: two messages at one place: {shown}"


def shown(world: World, job: Job) -> str:
    message = next(m for m in world.bot_messages() if m.id == job.progress_message_id)
    return message.embeds[0].description or ""


async def assert_every_waiting_message_is_true(world: World) -> None:
    """Each waiting job's message shows its place, and its ready time within ETA_STEP of
    the one estimate."""
    services = world.services
    estimates = await queue_estimates(services)
    now = services.store.clock()
    for job in services.scheduler.queued_jobs():
        text = shown(world, job)
        where = estimates[job.id]
        assert f"(#{where.position})" in text, (job.prompt, text)
        ready = READY.search(text)
        if where.ready_in is None:
            assert ready is None, text
        else:
            assert ready is not None, text
            assert abs(int(ready[1]) - (now + where.ready_in)) < ETA_STEP + 1, text


def queue_edit_bodies(world: World) -> list[tuple[int, str]]:
    """(message id, description) of every edit that wrote a queue note, in order."""
    prefix = f"/channels/{world.channel.id}/messages/"
    found = []
    for request in world.env.http_requests:
        text = description(request.json) if request.method == "PATCH" else None
        if text is not None and request.path.startswith(prefix) and (
                "Waiting in the queue" in text or ENGINE_DOWN_TEXT in text):
            found.append((int(request.path.removeprefix(prefix)), text))
    return found


async def submit(world: World, member: Any, prompt: str) -> Job:
    result = await member.slash(world.channel, "imagine", prompt=prompt)
    assert "Queued job" in text_of(result), text_of(result)
    return (await world.services.store.jobs_with_status())[-1]


async def waiting(world: World) -> dict[str, Job]:
    """The jobs waiting now, by prompt."""
    return {job.prompt: job for job in world.services.scheduler.queued_jobs()}


# --- the pieces ----------------------------------------------------------------------------


def test_a_ready_time_that_moved_less_than_a_minute_reads_the_same() -> None:
    shown = QueueNote(3, 10_000)
    assert reads_the_same(shown, QueueNote(3, 10_000 + int(ETA_STEP) - 1))
    assert not reads_the_same(shown, QueueNote(3, 10_000 + int(ETA_STEP)))
    assert not reads_the_same(shown, QueueNote(2, 10_000))
    assert not reads_the_same(shown, QueueNote(3, None))
    assert not reads_the_same(None, QueueNote(3, 10_000))


# --- true places and times -----------------------------------------------------------------


@dataclass
class Line:
    """alice's job running (held), then bob's "b1", alice's "a2", bob's "b2" waiting."""

    running: Job
    jobs: dict[str, Job]


async def a_line(world: World) -> Line:
    running = await submit(world, world.alice, "running")
    for member, prompt in ((world.bob, "b1"), (world.alice, "a2"), (world.bob, "b2")):
        await submit(world, member, prompt)
    await world.catch_up()
    return Line(running, await waiting(world))


async def test_every_waiting_message_shows_its_place_and_ready_time() -> None:
    async with running_world(FakeEngine(blocked=True)) as world:
        line = await a_line(world)
        assert [shown(world, line.jobs[p]).count("#") for p in ("b1", "a2", "b2")] == [1, 1, 1]
        assert "(#1)" in shown(world, line.jobs["b1"]) and "(#3)" in shown(world, line.jobs["b2"])
        await assert_every_waiting_message_is_true(world)


async def test_a_job_the_engine_takes_at_once_is_never_numbered() -> None:
    """Queued onto a ready, idle engine, a job goes from "Waiting in the queue." to "Starting"
    with no "#1" between: that edit would spend one of the channel's few on nothing (it
    once took the place of the job's last preview). The runner takes the job before the
    notes, woken by the same move, read the queue."""
    async with running_world(FakeEngine(blocked=True), warm_engine=True) as world:
        for attempt in range(10):
            await world.alice.slash(world.channel, "imagine", prompt=f"at once {attempt}")
            job = (await world.services.store.jobs_with_status())[-1]
            shown_texts = [description(body) or "" for body in world.job_edits(job.id)]
            assert any("Starting" in text for text in shown_texts), shown_texts
            assert not any(PLACE.search(text) for text in shown_texts), shown_texts
            world.engine.release()
            await world.env.settle()
            world.engine.block()
            await world.catch_up()


async def test_when_a_waiting_job_is_cancelled_those_behind_it_move_up() -> None:
    async with running_world(FakeEngine(blocked=True)) as world:
        line = await a_line(world)
        message = next(m for m in world.bot_messages() if m.id == line.jobs["b1"].progress_message_id)
        await world.bob.click(message, label="Cancel")
        await world.catch_up()
        # bob has not been served yet, so his b2 now goes first.
        assert "(#1)" in shown(world, line.jobs["b2"]) and "(#2)" in shown(world, line.jobs["a2"])
        await assert_every_waiting_message_is_true(world)
        assert_no_place_shown_twice(world)


async def test_when_a_job_starts_and_finishes_the_queue_moves_up() -> None:
    async with running_world(FakeEngine(blocked=True)) as world:
        line = await a_line(world)
        message = next(m for m in world.bot_messages() if m.id == line.running.progress_message_id)
        await world.alice.click(message, label="Cancel")  # the running job ends; b1 starts
        await world.catch_up()
        assert "Starting" in shown(world, line.jobs["b1"])
        assert "(#1)" in shown(world, line.jobs["a2"]) and "(#2)" in shown(world, line.jobs["b2"])
        await assert_every_waiting_message_is_true(world)
        assert_no_place_shown_twice(world)


async def test_the_answer_the_message_and_queue_give_the_same_estimate() -> None:
    async with running_world(FakeEngine()) as world:
        await submit(world, world.alice, "first")  # done: gives a speed to estimate from
        world.engine.block()
        await submit(world, world.alice, "running")
        result = await world.bob.slash(world.channel, "imagine", prompt="mine")
        await world.catch_up()
        job = (await waiting(world))["mine"]
        where = await estimate(world.services, job.id)
        assert where.ready_in is not None and where.starts_in is not None
        assert f"ready in about {format_duration(where.ready_in)}" in text_of(result)
        await assert_every_waiting_message_is_true(world)
        queue = text_of(await world.bob.slash(world.channel, "queue"))
        assert f"in about {format_duration(where.starts_in)}" in queue


# --- only what changed ---------------------------------------------------------------------


async def test_a_job_added_at_the_end_edits_only_its_own_message() -> None:
    async with running_world(FakeEngine(blocked=True), max_queued_per_user=5) as world:
        line = await a_line(world)
        before = {p: len(world.edits_of(j.progress_message_id)) for p, j in line.jobs.items()}
        late = await submit(world, world.bob, "b3")
        await world.catch_up()
        assert "(#4)" in shown(world, late)
        assert {p: len(world.edits_of(j.progress_message_id)) for p, j in line.jobs.items()} == before


async def test_no_queue_edit_repeats_what_its_message_already_shows() -> None:
    async with running_world(FakeEngine(blocked=True)) as world:
        line = await a_line(world)
        message = next(m for m in world.bot_messages() if m.id == line.jobs["b1"].progress_message_id)
        await world.bob.click(message, label="Cancel")
        await world.catch_up()
        last: dict[int, str] = {}
        for message_id, text in queue_edit_bodies(world):
            assert last.get(message_id) != text
            last[message_id] = text


# --- never two messages at one place ---------------------------------------------------------


async def test_newcomers_jumping_ahead_during_a_renumbering_never_share_a_place() -> None:
    async with running_world(FakeEngine(blocked=True), max_queued_per_user=6) as world:
        carol = world.guild.add_member(world.env.create_user("carol"))
        await submit(world, world.mod, "running")
        for n in range(1, 6):
            await submit(world, world.alice, f"a{n}")
        await world.catch_up()
        # bob and carol have never been served: their jobs go ahead of alice's later ones,
        # while the messages behind them are still being renumbered.
        await submit(world, world.bob, "b1")
        await world.env.advance_time(QUEUE_EDIT_WINDOW)
        await submit(world, carol, "c1")
        await world.catch_up()
        assert_no_place_shown_twice(world)
        await assert_every_waiting_message_is_true(world)


async def test_two_jobs_the_fair_order_swaps_never_share_a_place() -> None:
    # Shown: b1 b2 a3 a4 b5 a6 (#1-#6). Then, faster than the pace, bob queues b7, carol
    # (new) queues c8 and bob cancels b1: a4 (#4) should now be #5 and b5 (#5) #4, each
    # waiting for the other's place; one of them shows no number for a moment.
    async with running_world(FakeEngine(blocked=True), max_queued_per_user=6) as world:
        carol = world.guild.add_member(world.env.create_user("carol"))
        await submit(world, world.mod, "running")
        for member, prompt in ((world.bob, "b1"), (world.bob, "b2"), (world.alice, "a3"),
                               (world.alice, "a4"), (world.bob, "b5"), (world.alice, "a6")):
            await submit(world, member, prompt)
        await world.catch_up()
        jobs = await waiting(world)
        assert ["(#4)" in shown(world, jobs["a4"]), "(#5)" in shown(world, jobs["b5"])] == [True, True]
        await submit(world, world.bob, "b7")
        await submit(world, carol, "c8")
        message = next(m for m in world.bot_messages() if m.id == jobs["b1"].progress_message_id)
        await world.bob.click(message, label="Cancel")
        assert [j.prompt for j in world.services.scheduler.queued_jobs()][3:5] == ["b5", "a4"]
        await world.catch_up()
        assert_no_place_shown_twice(world)
        await assert_every_waiting_message_is_true(world)


class SlowStartEngine(FakeEngine):
    """Takes its time to start (models loading) until `started.set()`: the queue waits."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.loading = asyncio.Event()

    async def start(self) -> protocol.Ready:
        await self._wait(self.loading.wait(), "fake engine loading its models")
        return await super().start()


async def test_after_a_restart_the_messages_show_their_new_places_never_two_at_one() -> None:
    async with running_world(FakeEngine(blocked=True)) as world:
        line = await a_line(world)
        engine = SlowStartEngine()
        await world.restart(engine)  # "running" goes back to the front, the others move back
        await world.catch_up()
        for prompt, place in (("b1", 2), ("a2", 3), ("b2", 4)):
            assert f"(#{place})" in shown(world, line.jobs[prompt])
        assert "(#1)" in shown(world, line.running)
        assert_no_place_shown_twice(world)
        engine.loading.set()
        await world.catch_up()
        assert all(j.status is JobStatus.DONE for j in await world.services.store.jobs_with_status())


# --- the pace --------------------------------------------------------------------------------


def queue_edits(world: World, since: int = 0) -> list[Any]:
    return [r for r in world.env.http_requests[since:]
            if r.method == "PATCH" and "Waiting in the queue" in str(r.json)]


async def test_after_a_restart_the_first_queue_edit_waits_one_window() -> None:
    """The pace holds across a restart (bench/soak.py found 4 queue edits in 5 s where a
    restart fell between two pairs): the new bot does not know the old one's last edits,
    so it waits one window before its first."""
    async with running_world(FakeEngine(blocked=True)) as world:
        await a_line(world)
        # The engine loads for a while: "running" waits at the front, the others move back.
        engine = SlowStartEngine()
        sent = len(world.env.http_requests)
        await world.restart(engine)
        await world.env.advance_time(QUEUE_EDIT_WINDOW - 0.5)
        assert queue_edits(world, sent) == []
        await world.catch_up()
        assert queue_edits(world, sent)  # the places moved: they are shown, after the hold
        assert_no_place_shown_twice(world)
        await assert_every_waiting_message_is_true(world)
        engine.loading.set()



async def test_a_queue_of_30_from_5_members_is_kept_true_within_the_documented_pace() -> None:
    engine = FakeEngine(blocked=True, step_delay=3.0)
    settings = dict(max_queued_per_user=7, default_daily_quota=50)
    async with running_world(engine, **settings) as world:  # type: ignore[arg-type]
        members = [world.alice, world.bob, world.mod] + [
            world.guild.add_member(world.env.create_user(name)) for name in ("carol", "dave")]
        edited_at: list[tuple[datetime.datetime, str]] = []

        async def on_raw_message_edit(payload: discord.RawMessageUpdateEvent) -> None:
            text = description(payload.data)
            if text is not None and ("Waiting in the queue" in text or ENGINE_DOWN_TEXT in text):
                edited_at.append((datetime.datetime.fromisoformat(payload.data["edited_timestamp"]), text))

        world.bot.add_listener(on_raw_message_edit)
        await submit(world, world.alice, "running")
        for round_ in range(6):
            for member in members:
                await submit(world, member, f"{member.name} {round_}")
        assert len(world.services.scheduler) == 30
        await world.catch_up()
        await assert_every_waiting_message_is_true(world)
        assert_no_place_shown_twice(world)

        engine.release()  # 31 jobs of 12 s each run one after another
        while len(await world.services.store.jobs_with_status(JobStatus.DONE)) < 31:
            await world.env.advance_time(QUEUE_EDIT_WINDOW)
        await world.catch_up()

        times = sorted(at for at, _ in edited_at)
        assert len(times) == len(queue_edit_bodies(world)) > 30
        # At most QUEUE_EDITS_PER_WINDOW edits in any window of QUEUE_EDIT_WINDOW seconds.
        window = datetime.timedelta(seconds=QUEUE_EDIT_WINDOW)
        for first, last in zip(times, times[QUEUE_EDITS_PER_WINDOW:]):
            assert last - first >= window, (first, last)
        # Fewer edits than one per waiting message and move: what moved faster than the
        # pace was skipped, not queued up.
        assert len(times) < sum(range(1, 31))
        assert_no_place_shown_twice(world)
