"""A job's one channel message: posted when the job is queued, then edited as it waits and
runs; its final state (result, failure) is posted anew, to notify the requester.

All of these are ordinary channel messages written with the bot token, never through the
interaction token (which dies after 15 minutes), so jobs of any length end properly. The
buttons come from view factories handed in by the app (`bot.views`), which keeps this
module, and everything that uses it, free of the buttons' own imports.

Who is told. Every job message names its requester in its text (`render.requester_content`)
without notifying anyone: the client's allowed mentions are none. Only the result and a
failure notify, and only the requester: Discord notifies a mention in a *new* message and
never one added by an edit, so these are posted as a new message whose allowed mentions are
exactly that one user (`notify_requester`), and the progress message is then deleted: the
job keeps one message, now at the bottom of the channel where the requester looks. A
cancel is not announced (whoever cancelled knows): that message is edited in place, and not
posted again if it was deleted. If the new message cannot be posted, the progress message is edited into the final state instead
(no notification, but the picture is not lost); if that fails too, both are tried once
more (`ANNOUNCE_ROUNDS`).

What the waiting messages claim. `bot.queue_notes` writes waiting jobs' queue notes
(`show_note`); every other write replaces a note. This module remembers which note each
message shows, once the write is done, so the queue notes never give a place that another
message still shows (`claims`). Writes to one message are made one at a time, in order.

The pace. Every edit of a job's message goes through one per-channel pace
(`bot.pacing.ChannelPace`, `self.pace`): a cancellation, an interruption, a result shown
in place and the engine-down note of a job handed over wait for room (`wait_for_room`);
"Starting" and progress are skipped when there is none (the runner asks
`has_room_for_progress` first and shows a later one); queue notes keep to their own
smaller share. New messages (the job's, its result, its failure) are not held
back (`bot.pacing` says why). The wait is `client.wait_for(PACE_EVENT, timeout=...)`, an
event nothing dispatches: under SimCord, a wait the simulated clock controls, as the queue
notes' is.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import weakref
from collections.abc import Callable
from typing import Any

import discord

from bot import render
from bot.jobs import ENGINE_DOWN_NOTE, Job, QueueNote
from bot.pacing import ChannelPace, Write

log = logging.getLogger(__name__)

ViewFactory = Callable[[str], discord.ui.View]
#: A failed job's buttons (Retry), or None for none.
FailureViewFactory = Callable[[Job], discord.ui.View | None]
#: The discord.py custom event a write waiting for the channel's pace waits on (its timeout).
PACE_EVENT = "vqc_channel_pace"
#: Rounds of (post the final message, else edit the progress message into it) before a
#: job's final state is given up: one failed post and one failed edit must not lose it.
ANNOUNCE_ROUNDS = 2


def notify_requester(job: Job) -> discord.AllowedMentions:
    """The allowed mentions of a message that must notify the job's requester and nobody
    else, whatever else its text holds."""
    return discord.AllowedMentions(everyone=False, roles=False, replied_user=False,
                                   users=[discord.Object(id=job.user_id)])


class JobMessages:
    """Writes job messages; every write failure is logged, never raised (a lost preview must
    not cost the picture)."""

    def __init__(self, client: discord.Client, *, progress_view: ViewFactory,
                 result_view: ViewFactory, failure_view: FailureViewFactory | None = None,
                 pace: ChannelPace | None = None) -> None:
        self.client = client
        #: The one pace of every message write in a channel (`bot.pacing`).
        self.pace = pace or ChannelPace()
        self.progress_view = progress_view
        self.result_view = result_view
        self.failure_view: FailureViewFactory = failure_view or (lambda job: None)
        #: Job messages Discord says are deleted: never edited again (each try would be
        #: one more 404, which Discord counts against the bot's invalid requests). Held
        #: until the job's end is written (`_ended`), like `_gone`.
        self._deleted: set[int] = set()
        #: The queue note each job's message shows now (only messages showing one).
        self._notes: dict[str, QueueNote] = {}
        #: Jobs whose message is gone (deleted): no queue note is written to it any more.
        self._gone: set[str] = set()
        #: One lock per job being written, so the writes to a message land in order.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        #: Called when a message stops claiming a place (`bot.queue_notes` waits for it).
        self.on_release: Callable[[], None] | None = None

    # ------------------------------------------------------------------ queue notes

    def note_of(self, job_id: str) -> QueueNote | None:
        return self._notes.get(job_id)

    def claims(self) -> dict[int, str]:
        """Place -> the job whose message shows it now."""
        return {note.position: job_id for job_id, note in self._notes.items()
                if note.position is not None}

    def remember(self, job_id: str, note: QueueNote) -> None:
        """What a message showed before a restart (the store keeps it)."""
        self._notes[job_id] = note

    def release(self, job_id: str) -> None:
        """The job's message claims nothing any more: it was written otherwise, or it will
        not be written by anyone (the job left the queue on a path that writes nothing)."""
        note = self._notes.pop(job_id, None)
        if note is not None and note.position is not None and self.on_release is not None:
            self.on_release()

    def is_gone(self, job_id: str) -> bool:
        return job_id in self._gone

    async def show_note(self, job: Job, note: QueueNote, kind: Write = Write.QUEUE) -> bool:
        """A waiting job's place and time, or that the engine is down (`bot.queue_notes`,
        which edits only when the pace has room for a queue edit)."""
        embed = (render.waiting_for_engine_embed(job) if note.engine_down
                 else render.queued_embed(job, note.position, note.ready_at))
        return await self.edit(job, note=note, kind=kind, embed=embed)

    # ------------------------------------------------------------------ the job's states

    async def post(self, channel: discord.abc.Messageable, job: Job) -> discord.Message:
        """Post a new job's message (raises `discord.HTTPException`: the caller refuses the
        job then, since nobody could follow or cancel it)."""
        return await channel.send(content=render.requester_content(job),
                                  embed=render.queued_embed(job, None, None),
                                  view=self.progress_view(job.id))

    async def engine_down(self, job: Job) -> bool:
        """A job handed over shows the engine down instead of "Starting". Needed, not
        skippable: while the engine is down no progress follows to correct the message."""
        return await self.show_note(job, ENGINE_DOWN_NOTE, Write.NEEDED)

    async def started(self, job: Job) -> bool:
        """"Starting"; False if it could not, or the pace had no room (progress follows)."""
        return await self.edit(job, kind=Write.PROGRESS, embed=render.started_embed(job),
                               view=self.progress_view(job.id))

    def has_room_for_progress(self, job: Job) -> bool:
        """Whether the job's channel has room for a progress edit now (else it is skipped)."""
        return self.pace.delay(job.channel_id, Write.PROGRESS) <= 0

    async def progress(self, job: Job, iteration: int, total: int, eta: float | None,
                       preview: bytes | None) -> bool:
        """Show the job's progress; False if it could not, or the pace had no room for it."""
        fields: dict[str, Any] = {}
        preview_name = None
        if preview:
            preview_name = f"preview-{job.id}-{iteration}.jpg"
            fields["attachments"] = [discord.File(io.BytesIO(preview), filename=preview_name)]
        fields["embed"] = render.progress_embed(job, iteration, total, eta, preview_name)
        return await self.edit(job, kind=Write.PROGRESS, **fields)

    async def result(self, job: Job, *, png: bytes, name: str, seed: int, seconds: float,
                     width: int, height: int) -> int | None:
        """Post the job's result, notifying its requester; returns the id of the message
        that shows it (see the module docstring)."""
        def fields() -> dict[str, Any]:
            # A File can be sent once; a fresh one per attempt.
            return {
                "embed": render.result_embed(job, seed=seed, seconds=seconds, width=width,
                                             height=height, image_name=name),
                "view": self.result_view(job.id),
                "file": discord.File(io.BytesIO(png), filename=name),
            }
        return await self._announce(job, render.ready_content(job), fields)

    async def failed(self, job: Job, message: str) -> int | None:
        """The failure, with Retry buttons when it was not the user's doing (`job.failure`)."""
        return await self._announce(job, render.failed_content(job),
                                    lambda: {"embed": render.failed_embed(job, message),
                                             "view": self.failure_view(job)})

    async def cancelled(self, job: Job, by_user_id: int | None) -> int | None:
        """The job's message says it was cancelled, in place; a deleted message is not posted
        again (whoever cancelled was answered, and a cancelled job has nothing to show)."""
        shown = await self.edit(job, embed=render.cancelled_embed(job, by_user_id), view=None,
                                attachments=[])
        self._ended(job)
        return job.progress_message_id if shown else None

    async def apology(self, job: Job) -> int | None:
        return await self._announce(job, render.failed_content(job),
                                    lambda: {"embed": render.apology_embed(job)})

    async def interrupted(self, job: Job) -> bool:
        shown = await self.edit(job, embed=render.interrupted_embed(job), attachments=[], view=None)
        self._ended(job)
        return shown

    # ------------------------------------------------------------------ writing

    async def wait_for_room(self, channel_id: int, kind: Write) -> None:
        """Return once the channel's pace has room for an edit of `kind`; the caller takes
        the place (`pace.writing`) with no await in between, so nothing takes it first.
        A plain coroutine, not a context manager: SimCord recognises a `wait_for` as a
        wait on its clock by walking the awaiting coroutines, which an async generator
        would hide."""
        if self.pace.delay(channel_id, kind) <= 0:
            return
        with self.pace.waiting(channel_id) if kind is Write.NEEDED else contextlib.nullcontext():
            while (delay := self.pace.delay(channel_id, kind)) > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await self.client.wait_for(PACE_EVENT, timeout=delay)

    def _channel(self, job: Job) -> discord.PartialMessageable:
        return self.client.get_partial_messageable(job.channel_id, guild_id=job.guild_id)

    def _lock(self, job_id: str) -> asyncio.Lock:
        lock = self._locks.get(job_id)
        if lock is None:
            lock = self._locks[job_id] = asyncio.Lock()
        return lock

    def _ended(self, job: Job) -> None:
        """The job's end is written: nothing edits its message again, so what was remembered
        of a deleted one would only pile up for as long as the bot runs."""
        self._gone.discard(job.id)
        if job.progress_message_id is not None:
            self._deleted.discard(job.progress_message_id)

    def _shows(self, job_id: str, note: QueueNote | None) -> None:
        """Record what the job's message shows once a write is done (None: no note)."""
        if note is None:
            self.release(job_id)
        else:
            self._notes[job_id] = note

    async def edit(self, job: Job, *, note: QueueNote | None = None, kind: Write = Write.NEEDED,
                   **fields: Any) -> bool:
        """Edit the job's message (showing `note`, if it is a queue note), paced as `kind`;
        False (logged) if it has none or the edit failed, or a progress edit found no room."""
        async with self._lock(job.id):
            if kind is Write.PROGRESS and not self.has_room_for_progress(job):
                return False
            done = await self._edit_now(job, fields, kind)
            self._shows(job.id, note if done else None)
            return done

    async def _edit_now(self, job: Job, fields: dict[str, Any], kind: Write = Write.NEEDED) -> bool:
        if job.progress_message_id is None or job.progress_message_id in self._deleted:
            return False
        try:
            await self.wait_for_room(job.channel_id, kind)
            with self.pace.writing(job.channel_id, kind):
                await self._channel(job).get_partial_message(job.progress_message_id).edit(**fields)
            return True
        except asyncio.CancelledError:
            raise
        except discord.NotFound:
            log.info("job %s: its message %s was deleted; not editing it again",
                     job.id, job.progress_message_id)
            self._deleted.add(job.progress_message_id)
            self._gone.add(job.id)
        except Exception as error:
            log.warning("job %s: could not edit its message %s: %s",
                        job.id, job.progress_message_id, error)
        return False

    async def _announce(self, job: Job, content: str,
                        make_fields: Callable[[], dict[str, Any]]) -> int | None:
        """Post the job's final state as a new message that notifies its requester, then
        delete the progress message; if the post fails, edit the progress message into it
        (without a notification); if that fails too, try both again, `ANNOUNCE_ROUNDS` in
        all. Returns the id of the message that shows it (None: none could)."""
        async with self._lock(job.id):
            shown = None
            for _ in range(ANNOUNCE_ROUNDS):
                shown = await self._post_final(job, content, make_fields)
                if shown is None:
                    shown = await self._edit_final(job, make_fields)
                if shown is not None:
                    break
            self._shows(job.id, None)
            self._ended(job)
            return shown

    async def _post_final(self, job: Job, content: str,
                          make_fields: Callable[[], dict[str, Any]]) -> int | None:
        """The final state as a new message, then the progress message deleted; None (logged)
        if the post failed."""
        try:
            message = await self._channel(job).send(
                content=content, allowed_mentions=notify_requester(job), **make_fields())
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.warning("job %s: could not post its final message in channel %s (%s); "
                        "editing its progress message instead", job.id, job.channel_id, error)
            return None
        if job.progress_message_id is not None and job.progress_message_id != message.id:
            try:
                await self._channel(job).get_partial_message(job.progress_message_id).delete()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("job %s: could not delete its progress message %s: %s",
                            job.id, job.progress_message_id, error)
        return message.id

    async def _edit_final(self, job: Job, make_fields: Callable[[], dict[str, Any]]) -> int | None:
        """The progress message edited into the final state (no notification); None if that
        failed or there is none."""
        fields = make_fields()
        file = fields.pop("file", None)
        done = await self._edit_now(job, {"view": None, **fields,
                                          "attachments": [file] if file is not None else []})
        return job.progress_message_id if done else None
