"""The job buttons and the edit modal: Cancel (on a waiting or running job); Reroll, Vary,
Edit, Info and Timelapse (on a result: five, the most a row holds); Retry and Retry smaller
(on a failure that was not the user's doing).

The buttons are discord.py `DynamicItem`s whose custom id carries the job id
(`vqc:reroll:<job id>`), so they need no in-memory view: any bot process that registered
the item classes (`bot.add_dynamic_items`, done by the generate cog) answers them, also
after a restart and for messages posted weeks ago. Everything a button needs is then read
from the store by job id. discord.py only logs what a dynamic item's callback raises, so
each click is run through the one error handler here (`_JobButton.callback`).
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
from typing import Any, ClassVar, Self

import discord

from bot import render
from bot.attachments import fetch_image
from bot.cancel import cancel_job
from bot.config import Settings
from bot.enqueue import submit_and_answer
from bot.errors import NotAllowed, UserError
from bot.interactions import answer, defer, report_error, services_of
from bot.jobs import ImageSource, Job, JobKind, JobStatus
from bot.permissions import may_manage
from bot.recipe import png_text, reproduce_argv, shell_command
from bot.requests import (
    InputImage,
    JobRequest,
    fit_size,
    job_size,
    member_iterations,
    reroll_request,
    stored_input,
    validate_iterations,
    validate_prompt,
    validate_replace,
    vary_request,
)
from bot.retry import can_retry, retry_request, smaller_retry_size
from bot.services import Services
from bot.timelapse import animate, kept_frames

log = logging.getLogger(__name__)

_JOB = r"(?P<job_id>[a-z0-9]{1,32})"
CANCEL_PREFIX = "vqc:cancel:"
REROLL_PREFIX = "vqc:reroll:"
EDIT_PREFIX = "vqc:edit:"
RETRY_PREFIX = "vqc:retry:"
RETRY_SMALLER_PREFIX = "vqc:retrysmall:"
VARY_PREFIX = "vqc:vary:"
INFO_PREFIX = "vqc:info:"
TIMELAPSE_PREFIX = "vqc:timelapse:"


class _JobButton:
    """What the job buttons share: the button with its job id in the custom id, re-created
    from that id on a click, the job looked up before `on_click` runs, and errors sent to
    the one handler.

    A mixin placed before `DynamicItem` in each button's bases, not a `DynamicItem`
    subclass: `DynamicItem.__init_subclass__` demands a `template=` on every subclass
    statement, so an intermediate base class cannot be one. Subclasses set the four
    class attributes below and pass `template=PREFIX + _JOB`.
    """

    PREFIX: ClassVar[str]
    LABEL: ClassVar[str]
    STYLE: ClassVar[discord.ButtonStyle]
    EMOJI: ClassVar[str]

    def __init__(self, job_id: str, *, label: str | None = None) -> None:
        # `label`: where one message holds several (`/jobs`) or the label names a size; a
        # click re-creates the item from its custom id alone, which the label is not part of.
        super().__init__(discord.ui.Button(  # type: ignore[call-arg]  # DynamicItem.__init__, next in the MRO
            label=label or self.LABEL, style=self.STYLE, emoji=self.EMOJI,
            custom_id=self.PREFIX + job_id,
        ))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str], /) -> Self:
        return cls(match["job_id"])

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            services = services_of(interaction)
            job = await services.store.get_job(self.job_id)
            if job is None:
                raise UserError(render.job_forgotten(self.job_id))
            await self.on_click(interaction, services, job)
        except Exception as error:
            await report_error(interaction, error)

    async def on_click(self, interaction: discord.Interaction, services: Services, job: Job) -> None:
        raise NotImplementedError


class CancelButton(_JobButton, discord.ui.DynamicItem[discord.ui.Button], template=CANCEL_PREFIX + _JOB):
    """Stops a queued or running job; only its requester or an admin may."""

    PREFIX = CANCEL_PREFIX
    LABEL = render.CANCEL_LABEL
    STYLE = discord.ButtonStyle.secondary
    EMOJI = render.CANCEL_EMOJI

    async def on_click(self, interaction: discord.Interaction, services: Services, job: Job) -> None:
        if not may_manage(interaction, job.user_id):
            raise NotAllowed(render.only_requester_cancels(job))
        if job.status.is_finished:
            raise UserError(render.cancel_too_late(job))
        await defer(interaction)
        await answer(interaction, await cancel_job(services, job.id, by_user_id=interaction.user.id))


class RerollButton(_JobButton, discord.ui.DynamicItem[discord.ui.Button], template=REROLL_PREFIX + _JOB):
    """Queues the same prompt and parameters with a new seed (a new job for the clicker)."""

    PREFIX = REROLL_PREFIX
    LABEL = render.REROLL_LABEL
    STYLE = discord.ButtonStyle.primary
    EMOJI = render.REROLL_EMOJI

    async def on_click(self, interaction: discord.Interaction, services: Services, job: Job) -> None:
        request = reroll_request(services.settings, services.results_dir, job)
        await submit_and_answer(interaction, request)


class EditButton(_JobButton, discord.ui.DynamicItem[discord.ui.Button], template=EDIT_PREFIX + _JOB):
    """Opens a modal for a prompt, then edits this result."""

    PREFIX = EDIT_PREFIX
    LABEL = render.EDIT_LABEL
    STYLE = discord.ButtonStyle.secondary
    EMOJI = render.EDIT_EMOJI

    async def on_click(self, interaction: discord.Interaction, services: Services, job: Job) -> None:
        if job.status is not JobStatus.DONE or not job.result_path:
            raise UserError(render.no_result_text(job, render.EDIT_VERB))
        source = stored_input(services.results_dir, job.result_path)
        assert source is not None, "a path in, an image out"
        message = interaction.message
        shown = ImageSource(
            jump_url=message.jump_url if message is not None else None,
            thumbnail_url=message.attachments[0].url if message is not None and message.attachments else None,
            job_id=job.id,
        )
        await interaction.response.send_modal(EditModal(
            source=source, size=job_size(services.settings, job), parent_id=job.id, shown=shown,
        ))


class RetryButton(_JobButton, discord.ui.DynamicItem[discord.ui.Button], template=RETRY_PREFIX + _JOB):
    """Queues a failed job's request again (a new job for the clicker, as Reroll), when it
    failed through no fault of the user (`bot.retry`)."""

    PREFIX = RETRY_PREFIX
    LABEL = render.RETRY_LABEL
    STYLE = discord.ButtonStyle.primary
    EMOJI = render.RETRY_EMOJI

    async def on_click(self, interaction: discord.Interaction, services: Services, job: Job) -> None:
        await submit_and_answer(interaction, retry_request(services.settings, services.results_dir, job))


class RetrySmallerButton(_JobButton, discord.ui.DynamicItem[discord.ui.Button],
                         template=RETRY_SMALLER_PREFIX + _JOB):
    """After running out of memory: the same request at the suggested smaller size."""

    PREFIX = RETRY_SMALLER_PREFIX
    LABEL = render.RETRY_SMALLER_LABEL
    STYLE = discord.ButtonStyle.secondary
    EMOJI = render.RETRY_SMALLER_EMOJI

    async def on_click(self, interaction: discord.Interaction, services: Services, job: Job) -> None:
        await submit_and_answer(interaction, retry_request(services.settings, services.results_dir,
                                                           job, smaller=True))


class VaryButton(_JobButton, discord.ui.DynamicItem[discord.ui.Button], template=VARY_PREFIX + _JOB):
    """Re-optimises this result briefly with the same prompt and a new seed
    (`requests.vary_request`): a new job for the clicker, charged like a Reroll."""

    PREFIX = VARY_PREFIX
    LABEL = render.VARY_LABEL
    STYLE = discord.ButtonStyle.primary
    EMOJI = render.VARY_EMOJI

    async def on_click(self, interaction: discord.Interaction, services: Services, job: Job) -> None:
        request = vary_request(services.settings, services.results_dir, job)
        await submit_and_answer(interaction, request)


class InfoButton(_JobButton, discord.ui.DynamicItem[discord.ui.Button], template=INFO_PREFIX + _JOB):
    """Answers privately with how this image was made and the `vqgan-clip` command that
    makes it again (`bot.recipe`). It reveals nothing the PNG's own text chunks don't."""

    PREFIX = INFO_PREFIX
    LABEL = render.INFO_LABEL
    STYLE = discord.ButtonStyle.secondary
    EMOJI = render.INFO_EMOJI

    async def on_click(self, interaction: discord.Interaction, services: Services, job: Job) -> None:
        png = await _result_png(services, job, render.INFO_VERB)
        metadata = await asyncio.to_thread(png_text, png)
        command = shell_command(reproduce_argv(job, metadata))
        await answer(interaction, embed=render.info_embed(job, metadata, command,
                                                          await _source_link(services, job)))


class TimelapseButton(_JobButton, discord.ui.DynamicItem[discord.ui.Button],
                      template=TIMELAPSE_PREFIX + _JOB):
    """Posts the animated WebP of this result's optimisation in the channel (a reply to the
    result, pinging no one) and tells the clicker where. Once per result: a later click
    links to that message, unless it was deleted."""

    PREFIX = TIMELAPSE_PREFIX
    LABEL = render.TIMELAPSE_LABEL
    STYLE = discord.ButtonStyle.secondary
    EMOJI = render.TIMELAPSE_EMOJI

    #: Jobs whose timelapse this process is posting now. Checked and claimed with no await
    #: in between (the event loop runs one callback at a time), and the job re-read after
    #: the claim, so two quick clicks never post twice.
    posting: ClassVar[set[str]] = set()

    async def on_click(self, interaction: discord.Interaction, services: Services, job: Job) -> None:
        if job.id in self.posting:
            await answer(interaction, render.timelapse_busy_text(job))
            return
        self.posting.add(job.id)
        try:
            await defer(interaction)
            fresh = await services.store.get_job(job.id)
            assert fresh is not None, "jobs are never deleted"
            await answer(interaction, await _post_timelapse(interaction, services, fresh))
        finally:
            self.posting.discard(job.id)


async def _result_png(services: Services, job: Job, what: str) -> bytes:
    """The result's PNG, or a `UserError` saying why there is none (`what`: the button's
    verb, `render.INFO_VERB`, ...)."""
    if job.status is not JobStatus.DONE or not job.result_path:
        raise UserError(render.no_result_text(job, what))
    try:
        return await asyncio.to_thread((services.results_dir / job.result_path).read_bytes)
    except OSError:
        raise UserError(render.result_missing_text(job)) from None


async def _source_link(services: Services, job: Job) -> str | None:
    """The message of the result an edit started from (a Vary's, an Edit button's)."""
    parent = await services.store.get_job(job.parent_id) if job.parent_id else None
    if parent is None or parent.result_message_id is None or parent.result_path != job.input_path:
        return None
    return render.message_link(parent.guild_id, parent.channel_id, parent.result_message_id)


async def _post_timelapse(interaction: discord.Interaction, services: Services, job: Job) -> str:
    """Post `job`'s timelapse unless its message is still there; returns the answer."""
    channel = interaction.client.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
    if job.timelapse_message_id is not None:
        posted = render.message_link(job.guild_id, job.channel_id, job.timelapse_message_id)
        try:
            await channel.fetch_message(job.timelapse_message_id)
            return render.timelapse_already_text(posted)
        except discord.NotFound:
            pass  # deleted: post it again
        except discord.HTTPException as error:  # can't look: better a link than a duplicate
            log.warning("job %s: could not check its timelapse message: %s", job.id, error)
            return render.timelapse_already_text(posted)
    png = await _result_png(services, job, render.TIMELAPSE_VERB)
    frames = await asyncio.to_thread(kept_frames, services.results_dir, job.id)
    if not frames:
        raise UserError(render.no_timelapse_text(job))
    webp = await asyncio.to_thread(animate, frames, png)
    reply: dict[str, Any] = {}
    if job.result_message_id is not None:  # a reply to the result, if it is still there
        reply["reference"] = channel.get_partial_message(job.result_message_id).to_reference(
            fail_if_not_exists=False)
    try:
        message = await channel.send(
            render.timelapse_post_text(job, len(frames)),
            file=discord.File(io.BytesIO(webp), filename=f"timelapse-{job.id}.webp"),
            mention_author=False, allowed_mentions=discord.AllowedMentions.none(), **reply,
        )
    except discord.HTTPException as error:
        log.warning("job %s: cannot post its timelapse in channel %s: %s", job.id, job.channel_id, error)
        raise UserError(render.CANNOT_POST_TIMELAPSE) from None
    await services.store.update_job(job.id, timelapse_message_id=message.id)
    return render.timelapse_posted_text(message.jump_url)


class EditModal(discord.ui.Modal, title=render.EDIT_MODAL_TITLE):
    """Asks for the edit prompt (and optionally what to replace), then queues the edit.

    `source` is the image to edit: a stored image (a result), or a Discord attachment
    (context menu on someone's message), checked and downloaded only once the modal is
    submitted, since most of the cost of a bad file should fall on no one.
    """

    prompt: discord.ui.TextInput = discord.ui.TextInput(
        label=render.EDIT_PROMPT_LABEL, custom_id="prompt", placeholder=render.EDIT_PROMPT_PLACEHOLDER,
        max_length=500, required=True,
    )
    replace: discord.ui.TextInput = discord.ui.TextInput(
        label=render.EDIT_REPLACE_LABEL, custom_id="replace", placeholder=render.EDIT_REPLACE_PLACEHOLDER,
        max_length=100, required=False,
    )

    def __init__(self, *, source: InputImage | discord.Attachment, size: tuple[int, int] | None,
                 parent_id: str | None = None, shown: ImageSource | None = None) -> None:
        super().__init__(timeout=15 * 60)
        self.source = source
        self.size = size
        self.parent_id = parent_id
        #: Where the image came from, named in the queued answer.
        self.shown = shown

    async def on_submit(self, interaction: discord.Interaction) -> None:
        services = services_of(interaction)
        prompt = self.prompt.value or ""
        validate_prompt(prompt)
        replace = validate_replace(self.replace.value)
        defaults = await services.store.get_member_settings(interaction.guild_id, interaction.user.id)
        iterations = validate_iterations(services.settings, member_iterations(services.settings, defaults))
        source = self.source
        size = self.size
        if isinstance(source, discord.Attachment):  # check and download it now
            await defer(interaction)
            source = await fetch_image(source, max_bytes=services.settings.max_image_bytes)
            size = fit_size(services.settings, source.width, source.height)
        assert size is not None, "a stored source always comes with its size"
        await submit_and_answer(interaction, JobRequest(
            kind=JobKind.EDIT, prompt=prompt, width=size[0], height=size[1],
            iterations=iterations, init_image=source, replace=replace, parent_id=self.parent_id,
            source=self.shown,
        ))

    # discord.py's own Modal.on_error has this signature; its base class's has an extra item.
    async def on_error(self, interaction: discord.Interaction, error: Exception, /) -> None:  # type: ignore[override]
        await report_error(interaction, error)


def progress_view(job_id: str) -> discord.ui.View:
    """The buttons of a waiting or running job's message."""
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return view


def result_view(job_id: str) -> discord.ui.View:
    """The buttons of a finished image."""
    view = discord.ui.View(timeout=None)
    for button in (RerollButton, VaryButton, EditButton, InfoButton, TimelapseButton):
        view.add_item(button(job_id))
    return view


def failure_view(settings: Settings, job: Job) -> discord.ui.View | None:
    """The buttons of a failed job: Retry (and Retry smaller after running out of memory)
    when it failed through no fault of the user; None (no buttons) otherwise."""
    if not can_retry(job):
        return None
    view = discord.ui.View(timeout=None)
    view.add_item(RetryButton(job.id))
    smaller = smaller_retry_size(settings, job)
    if smaller is not None:
        view.add_item(RetrySmallerButton(job.id, label=render.retry_smaller_label(smaller)))
    return view


DYNAMIC_ITEMS = (CancelButton, RerollButton, EditButton, VaryButton, InfoButton, TimelapseButton,
                 RetryButton, RetrySmallerButton)
