"""The channel's edit pace (`bot.pacing`): at most 5 edits of the bot's messages in any 5 s
per channel, of which at most 2 are queue edits; progress is skipped when there is no
room, a needed edit (a cancellation) waits for it; new messages are never held back.

The first tests drive `ChannelPace` on a clock of their own; the others drive the real bot
through SimCord, where `time.monotonic` is SimCord's clock, and time every edit on it.
"""

from __future__ import annotations

from typing import Any

import pytest

from bot.jobs import JobStatus
from bot.pacing import (EDIT_WINDOW, EDITS_PER_WINDOW, QUEUE_EDITS_PER_WINDOW, RESERVED_FOR_NEEDED,
                        ChannelPace, Write)
from bot.runner import ProgressThrottle
from tests.bot.fake_engine import FakeEngine, World, running_world, text_of

CHANNEL, OTHER = 1, 2


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    clock = [100.0]
    monkeypatch.setattr("time.monotonic", lambda: clock[0])
    return clock


def edit(pace: ChannelPace, kind: Write = Write.NEEDED, key: int = CHANNEL) -> None:
    with pace.writing(key, kind):
        pass


# --- the pace on its own --------------------------------------------------------------------


def test_five_edits_fill_a_channel_for_five_seconds_and_no_other(now: list[float]) -> None:
    pace = ChannelPace()
    for _ in range(EDITS_PER_WINDOW):
        assert pace.delay(CHANNEL) == 0
        edit(pace)
    assert pace.delay(CHANNEL) == EDIT_WINDOW
    assert pace.delay(OTHER) == 0
    now[0] += EDIT_WINDOW - 1
    assert pace.delay(CHANNEL) == 1
    now[0] += 1
    assert pace.delay(CHANNEL) == 0


def test_progress_leaves_room_for_a_needed_edit(now: list[float]) -> None:
    pace = ChannelPace()
    for _ in range(EDITS_PER_WINDOW - RESERVED_FOR_NEEDED):
        edit(pace, Write.PROGRESS)
    assert pace.delay(CHANNEL, Write.PROGRESS) > 0
    assert pace.delay(CHANNEL, Write.NEEDED) == 0


def test_queue_edits_take_at_most_their_share(now: list[float]) -> None:
    pace = ChannelPace()
    for _ in range(QUEUE_EDITS_PER_WINDOW):
        edit(pace, Write.QUEUE)
    assert pace.delay(CHANNEL, Write.QUEUE) == EDIT_WINDOW
    assert pace.delay(CHANNEL, Write.PROGRESS) == 0


def test_while_a_needed_edit_waits_nothing_skippable_goes_first(now: list[float]) -> None:
    pace = ChannelPace()
    with pace.waiting(CHANNEL):
        assert pace.delay(CHANNEL, Write.PROGRESS) > 0
        assert pace.delay(CHANNEL, Write.QUEUE) > 0
        assert pace.delay(CHANNEL, Write.NEEDED) == 0
        assert pace.delay(OTHER, Write.PROGRESS) == 0
    assert pace.delay(CHANNEL, Write.PROGRESS) == 0


def test_an_edit_counts_from_when_discord_answered_it(now: list[float]) -> None:
    pace = ChannelPace(limit=2, window=5.0, queue_limit=1, reserved=0)
    edit(pace)
    with pace.writing(CHANNEL, Write.NEEDED):
        now[0] += 3.0  # a slow request (or discord.py waiting out a 429 inside it)
        # The first frees its place at 105; the one in flight would only a window from now.
        assert pace.delay(CHANNEL) == 2.0
    now[0] += 2.5
    # The first edit has left the window; the slow one counts from its answer, 2.5 s ago.
    assert pace.delay(CHANNEL) == 0
    edit(pace)
    assert pace.delay(CHANNEL) == pytest.approx(2.5)


def test_a_held_pace_counts_every_channel_full_for_one_window(now: list[float]) -> None:
    pace = ChannelPace()
    assert pace.delay(CHANNEL) == 0  # a first start holds nothing
    pace.hold()
    assert pace.delay(CHANNEL) == EDIT_WINDOW and pace.delay(OTHER) == EDIT_WINDOW
    now[0] += EDIT_WINDOW
    assert pace.delay(CHANNEL) == 0


def test_a_pace_without_room_for_each_kind_is_refused() -> None:
    with pytest.raises(ValueError):
        ChannelPace(limit=2, queue_limit=2, reserved=1)


def test_a_message_behind_shows_its_next_progress_at_once(now: list[float]) -> None:
    throttle = ProgressThrottle(interval=60.0)
    assert not throttle.due(has_preview=False)  # within the interval
    assert throttle.due(has_preview=False, behind=True)  # its "Starting" was skipped
    assert not throttle.due(has_preview=True, room=False)  # no room: a later one is shown


# --- the bot --------------------------------------------------------------------------------


class TimedRequests(list[Any]):
    """SimCord's request log, with SimCord's time of each request beside it."""

    def __init__(self, world: World) -> None:
        super().__init__(world.env.backend.http_requests)
        self.world = world
        self.at: list[float | None] = [None] * len(self)  # made before the log was timed

    def append(self, entry: Any) -> None:
        super().append(entry)
        self.at.append(self.world.env.now().timestamp())

    def edit_times(self, channel_id: int) -> list[float]:
        prefix = f"/channels/{channel_id}/messages/"
        return [at for entry, at in zip(self, self.at)
                if at is not None and entry.method == "PATCH" and entry.path.startswith(prefix)]


def timed(world: World) -> TimedRequests:
    log = TimedRequests(world)
    world.env.backend.http_requests = log
    return log


def most_in_any_window(times: list[float], window: float = EDIT_WINDOW) -> int:
    times = sorted(times)
    return max((sum(1 for t in times if start - window < t <= start) for start in times), default=0)


async def test_many_short_jobs_in_one_channel_keep_to_five_edits_in_five_seconds() -> None:
    async with running_world(FakeEngine(progress_steps=4), max_queued_per_user=10) as world:
        log = timed(world)
        for member in (world.alice, world.bob, world.mod):
            for n in range(3):
                await member.slash(world.channel, "imagine", prompt=f"tree {n}")
        await world.catch_up()
        jobs = await world.services.store.jobs_with_status()
        assert len(jobs) == 9 and all(job.status is JobStatus.DONE for job in jobs)
        # Every job's result was posted: new messages are not held back.
        results = [m for m in world.bot_messages() if m.attachments
                   and m.attachments[0].filename.endswith(".png")]
        assert len(results) == 9
        edits = log.edit_times(world.channel.id)
        assert edits and most_in_any_window(edits) <= EDITS_PER_WINDOW
        # Without the pace every job would show "Starting" and four previews: 45 edits.
        assert len(edits) < 9 * 5


async def test_a_cancel_waits_for_room_and_is_never_dropped() -> None:
    async with running_world(FakeEngine(blocked=True)) as world:
        await world.alice.slash(world.channel, "imagine", prompt="held")
        await world.alice.slash(world.channel, "imagine", prompt="waiting")
        waiting = (await world.services.store.jobs_with_status())[-1]
        await world.restart(FakeEngine(blocked=True))  # the new bot holds the pace a window
        log = timed(world)
        message = next(m for m in world.bot_messages() if m.id == waiting.progress_message_id)
        clicked_at = world.env.now().timestamp()
        result = await world.alice.click(message, label="Cancel")
        assert not text_of(result)  # deferred: the answer follows the edit
        assert "Cancelled" not in message_text(world, waiting.progress_message_id)
        await world.env.advance_time(EDIT_WINDOW)
        assert "before it started" in text_of(result)
        assert "Cancelled" in message_text(world, waiting.progress_message_id)
        assert min(log.edit_times(world.channel.id)) >= clicked_at + EDIT_WINDOW


def message_text(world: World, message_id: int | None) -> str:
    message = next(m for m in world.bot_messages() if m.id == message_id)
    return " ".join((e.title or "") + " " + (e.description or "") for e in message.embeds)
