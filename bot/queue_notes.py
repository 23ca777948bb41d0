"""Queue notes: every waiting job's channel message shows its true place and time.

Whenever the queue moves (a job is queued, starts, finishes or is cancelled, the queue is
restored at start-up) or the engine goes down or comes back, each waiting job's message
should say where it stands now: "Waiting in the queue (#3). Expected to be ready in 12
minutes", or "the image engine is down; your image keeps its place". This is the one
writer of those messages; the job runner writes only the job it has taken.

- **The same estimate everywhere.** Places and times come from `bot.eta.queue_estimates`,
  the computation behind the queued answer and `/queue`.
- **Only what changed.** A message is edited when the place it shows, or the engine-down
  note, differs from what it should show, or when its expected ready time moved by
  `ETA_STEP` (a minute) or more: Discord shows that time relative to now ("in 12 minutes"),
  which reads the same for a smaller move, and a ready time that stays put needs no edit
  as the minutes pass.
- **Paced.** At most `QUEUE_EDITS_PER_WINDOW` edits in any `QUEUE_EDIT_WINDOW` seconds per
  channel, a share of the channel's one pace for every message write, which the job
  messages hold (`bot.pacing`: why these numbers; they give way to results). Each edit is chosen afresh from the queue as
  it is at that moment, so a queue that moves faster than the pace is never worked
  through twice: what is shown catches up with what is true, front of the queue first.
- **No two messages claim one place.** `JobMessages` knows which place each message shows
  once a write is done. A place is given to a message only when no other message shows
  it: a job that was #1 and has just started holds "#1" until the runner's "Starting"
  edit has landed, a job being cancelled until its "Cancelled" edit has. Places move
  front first, so a queue that shrinks renumbers in one sweep; one that grows behind a
  newcomer renumbers from the back. When two waiting jobs would each take the other's
  place (the fair order can swap two jobs when a third leaves), one of them shows no
  number for a moment. A job queued during a pass is simply part of the next choice.
- **Across restarts.** What each message shows is kept in the store (`queue_notes`), so
  after a restart the old claims are known and right messages are not edited again.
- **Failures.** An edit Discord refuses (the message deleted, permissions gone) releases
  the message's claim; it is tried again only once the queue moved and the message has
  something new to show. A deleted message is never edited again.

The pace waits with `bot.wait_for(QUEUE_MOVED_EVENT, timeout=...)`: woken early by a
move, and, under SimCord, a wait the simulated clock controls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from enum import Enum

from discord.ext import commands

from bot.eta import Estimate, queue_estimates
from bot.jobs import ENGINE_DOWN_NOTE, Job, QueueNote
from bot.pacing import Write
from bot.services import Services

log = logging.getLogger(__name__)

#: The discord.py custom event that says the queue moved (or a place was released).
QUEUE_MOVED_EVENT = "vqc_queue_moved"
#: A shown ready time is edited once the estimate has moved by this many seconds.
ETA_STEP = 60.0


def note_for(estimate: Estimate, now: float, engine_down: bool) -> QueueNote:
    """What a waiting job's message should show, at epoch time `now`."""
    if engine_down:
        return ENGINE_DOWN_NOTE
    ready_at = None if estimate.ready_in is None else math.ceil(now + estimate.ready_in)
    return QueueNote(estimate.position, ready_at)


def reads_the_same(shown: QueueNote | None, wanted: QueueNote) -> bool:
    """Whether a message showing `shown` already tells what `wanted` tells (see ETA_STEP)."""
    if shown is None or (shown.position, shown.engine_down) != (wanted.position, wanted.engine_down):
        return False
    if shown.ready_at is None or wanted.ready_at is None:
        return shown.ready_at == wanted.ready_at
    return abs(shown.ready_at - wanted.ready_at) < ETA_STEP


class _Step(Enum):
    EDITED = "edited"


class QueueNotes:
    """See the module docstring. Made by the job runner: `restore()` with the queue,
    `start()`, `stop()`; `set_engine_down()` as the engine's state changes."""

    def __init__(self, bot: commands.Bot, services: Services) -> None:
        self.bot = bot
        self.services = services
        #: The channels' one pace, shared with every other message write.
        self.pace = services.messages.pace
        self.engine_down = False
        self._dirty = False
        self._task: asyncio.Task[None] | None = None
        #: The note whose edit failed, per job: not tried again until the job's note changes.
        self._refused: dict[str, QueueNote] = {}
        services.scheduler.on_change = self.poke
        services.messages.on_release = self.poke

    # ------------------------------------------------------------------ lifecycle

    async def restore(self, waiting: list[Job]) -> None:
        """Learn what the messages of jobs that were waiting before a restart show. A bot
        ran before this one (there are jobs): it may have edited up to the pace just now,
        so the pace waits one window first (`ChannelPace.hold`)."""
        if await self.services.store.jobs_with_status(limit=1):
            self.pace.hold()
        notes = await self.services.store.queue_notes([job.id for job in waiting])
        for job_id, note in notes.items():
            self.services.messages.remember(job_id, note)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="vqgan-clip queue notes")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def poke(self) -> None:
        """The queue moved, or a message released its place: look again."""
        self._dirty = True
        self.bot.dispatch(QUEUE_MOVED_EVENT)

    def set_engine_down(self, down: bool) -> None:
        if down != self.engine_down:
            self.engine_down = down
            self.poke()

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        while True:
            self._dirty = False
            try:
                wait = await self._catch_up()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("could not update the waiting jobs' messages; trying at the next move")
                wait, self._dirty = None, False
            if self._dirty:
                continue
            # No await between the check above and registering the wait: no move is missed.
            with contextlib.suppress(asyncio.TimeoutError):
                await self.bot.wait_for(QUEUE_MOVED_EVENT, timeout=wait)

    async def _catch_up(self) -> float | None:
        """Edit until every waiting message is right, or until only the pace or another
        message's claim holds the rest; then the seconds until the pace allows the next
        edit (None: only a move or a released place can change anything)."""
        while True:
            outcome = await self._step()
            if outcome is not _Step.EDITED:
                return outcome

    async def _step(self) -> _Step | float | None:
        """Make the first edit that is due and allowed now (see the module docstring)."""
        estimates = await queue_estimates(self.services)
        # From here to the edit, no await: the queue read is the queue edited.
        now = self.services.store.clock()
        messages = self.services.messages
        wanted = {job.id: (job, note_for(estimates[job.id], now, self.engine_down))
                  for job in self.services.scheduler.queued_jobs() if job.id in estimates}
        self._refused = {job_id: note for job_id, note in self._refused.items() if job_id in wanted}
        due = [(job, note) for job, note in wanted.values()
               if job.progress_message_id is not None and not messages.is_gone(job.id)
               and not reads_the_same(messages.note_of(job.id), note)
               and self._refused.get(job.id) != note]
        claims = messages.claims()
        wait: float | None = None
        blocked: list[tuple[Job, QueueNote]] = []
        for job, note in due:
            holder = claims.get(note.position) if note.position is not None else None
            if holder is not None and holder != job.id:
                blocked.append((job, note))
                continue
            delay = self.pace.delay(job.channel_id, Write.QUEUE)
            if delay > 0:
                wait = delay if wait is None else min(wait, delay)
                continue
            await self._show(job, note)
            return _Step.EDITED
        swap = self._first_in_a_cycle(blocked, claims, wanted)
        if swap is not None:
            job, note = swap
            delay = self.pace.delay(job.channel_id, Write.QUEUE)
            if delay == 0:
                await self._show(job, QueueNote(None, note.ready_at))
                return _Step.EDITED
            wait = delay if wait is None else min(wait, delay)
        return wait

    @staticmethod
    def _first_in_a_cycle(blocked: list[tuple[Job, QueueNote]], claims: dict[int, str],
                          wanted: dict[str, tuple[Job, QueueNote]]) -> tuple[Job, QueueNote] | None:
        """The first blocked job whose chain of blockers leads back to it (each wants the
        next one's place): nobody in it can move until one of them gives its place up. A
        chain that ends at a job no longer waiting just waits for that job's next write."""
        for job, note in blocked:
            seen = {job.id}
            position = note.position
            while position is not None and (holder := claims.get(position)) is not None:
                if holder == job.id:
                    return job, note
                if holder in seen or holder not in wanted:
                    break
                seen.add(holder)
                position = wanted[holder][1].position
        return None

    async def _show(self, job: Job, note: QueueNote) -> None:
        if await self.services.messages.show_note(job, note):
            self._refused.pop(job.id, None)
            await self.services.store.save_queue_note(job.id, note)
        else:
            self._refused[job.id] = note
