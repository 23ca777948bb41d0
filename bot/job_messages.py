"""A job's one channel message: posted when the job is queued, then edited as it waits,
runs and ends, into the result itself.

All of these are ordinary channel messages written with the bot token, never through the
interaction token (which dies after 15 minutes), so jobs of any length end properly. The
buttons come from view factories handed in by the app (`bot.views`), which keeps this
module, and everything that uses it, free of the buttons' own imports.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Callable
from typing import Any

import discord

from bot import render
from bot.jobs import Job

log = logging.getLogger(__name__)

ViewFactory = Callable[[str], discord.ui.View]
#: A failed job's buttons (Retry), or None for none.
FailureViewFactory = Callable[[Job], discord.ui.View | None]


class JobMessages:
    """Writes job messages; every edit failure is logged, never raised (a lost preview must
    not cost the picture)."""

    def __init__(self, client: discord.Client, *, progress_view: ViewFactory,
                 result_view: ViewFactory, failure_view: FailureViewFactory | None = None) -> None:
        self.client = client
        self.progress_view = progress_view
        self.result_view = result_view
        self.failure_view: FailureViewFactory = failure_view or (lambda job: None)
        #: Job messages Discord says are deleted: never edited again (each try would be
        #: one more 404, which Discord counts against the bot's invalid requests).
        self._deleted: set[int] = set()

    async def post(self, channel: discord.abc.Messageable, job: Job) -> discord.Message:
        """Post a new job's message (raises `discord.HTTPException`: the caller refuses the
        job then, since nobody could follow or cancel it)."""
        return await channel.send(embed=render.queued_embed(job, None, None),
                                  view=self.progress_view(job.id))

    async def queued(self, job: Job, position: int | None, ready_in: float | None) -> bool:
        return await self.edit(job, embed=render.queued_embed(job, position, ready_in))

    async def engine_down(self, job: Job) -> bool:
        return await self.edit(job, embed=render.waiting_for_engine_embed(job))

    async def started(self, job: Job) -> bool:
        return await self.edit(job, embed=render.started_embed(job), view=self.progress_view(job.id))

    async def progress(self, job: Job, iteration: int, total: int, eta: float | None,
                       preview: bytes | None) -> bool:
        fields: dict[str, Any] = {}
        preview_name = None
        if preview:
            preview_name = f"preview-{job.id}-{iteration}.jpg"
            fields["attachments"] = [discord.File(io.BytesIO(preview), filename=preview_name)]
        fields["embed"] = render.progress_embed(job, iteration, total, eta, preview_name)
        return await self.edit(job, **fields)

    async def result(self, job: Job, *, png: bytes, name: str, seed: int, seconds: float,
                     width: int, height: int) -> int | None:
        """Turn the job's message into its result; returns the id of the message that shows it."""
        def fields() -> dict[str, Any]:
            # A File can be sent once; a fresh one per attempt.
            return {
                "embed": render.result_embed(job, seed=seed, seconds=seconds, width=width,
                                             height=height, image_name=name),
                "view": self.result_view(job.id),
                "file": discord.File(io.BytesIO(png), filename=name),
            }
        return await self._final(job, fields)

    async def failed(self, job: Job, message: str) -> int | None:
        """The failure, with Retry buttons when it was not the user's doing (`job.failure`)."""
        return await self._final(job, lambda: {"embed": render.failed_embed(job, message),
                                               "view": self.failure_view(job)})

    async def cancelled(self, job: Job, by_user_id: int | None) -> int | None:
        """The job's message says it was cancelled; a deleted message is not posted again
        (whoever cancelled was answered, and a cancelled job has nothing to show)."""
        if await self.edit(job, embed=render.cancelled_embed(job, by_user_id), view=None,
                           attachments=[]):
            return job.progress_message_id
        return None

    async def apology(self, job: Job) -> int | None:
        return await self._final(job, lambda: {"embed": render.apology_embed(job)})

    async def interrupted(self, job: Job) -> bool:
        return await self.edit(job, embed=render.interrupted_embed(job), attachments=[], view=None)

    # ------------------------------------------------------------------ writing

    def _channel(self, job: Job) -> discord.PartialMessageable:
        return self.client.get_partial_messageable(job.channel_id, guild_id=job.guild_id)

    async def edit(self, job: Job, **fields: Any) -> bool:
        """Edit the job's message; False (logged) if it has none or the edit failed."""
        if job.progress_message_id is None or job.progress_message_id in self._deleted:
            return False
        try:
            await self._channel(job).get_partial_message(job.progress_message_id).edit(**fields)
            return True
        except asyncio.CancelledError:
            raise
        except discord.NotFound:
            log.info("job %s: its message %s was deleted; not editing it again",
                     job.id, job.progress_message_id)
            self._deleted.add(job.progress_message_id)
            return False
        except Exception as error:
            log.warning("job %s: could not edit its message %s: %s",
                        job.id, job.progress_message_id, error)
            return False

    async def _final(self, job: Job, make_fields: Callable[[], dict[str, Any]]) -> int | None:
        """Turn the job's message into its final state (result, failure, cancel); if that
        message is gone or can't be edited, post a new one. Returns the message id."""
        fields = make_fields()
        file = fields.pop("file", None)
        if job.progress_message_id is not None:
            edit_fields = {"view": None, **fields, "attachments": [file] if file is not None else []}
            if await self.edit(job, **edit_fields):
                return job.progress_message_id
        fields = make_fields()
        try:
            message = await self._channel(job).send(content=f"<@{job.user_id}>", **fields)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.error("job %s: could not post its final message in channel %s: %s",
                      job.id, job.channel_id, error)
            return None
        return message.id
