"""Buttons and modals on the job messages: Cancel (progress), Reroll and Edit (result).

The buttons are discord.py `DynamicItem`s whose custom id carries the job id
(`vqc:reroll:<job id>`), so they need no in-memory view: any bot process that registered
the item classes (`bot.add_dynamic_items`, done by the generate cog) answers them, also
after a restart and for messages posted weeks ago. Everything a button needs is then read
from the store by job id.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, ClassVar, Self

import discord

from bot.jobs import Job, JobKind, JobStatus
from bot.submission import (
    STARTING_MESSAGE,
    InputImage,
    JobRequest,
    RequestRejected,
    StoredImage,
    answer,
    defer,
    job_size,
    submit_and_answer,
    validate_iterations,
    validate_prompt,
    validate_replace,
)

if TYPE_CHECKING:
    from bot.services import Services

log = logging.getLogger(__name__)

_JOB = r"(?P<job_id>[a-z0-9]{1,32})"
CANCEL_PREFIX = "vqc:cancel:"
REROLL_PREFIX = "vqc:reroll:"
EDIT_PREFIX = "vqc:edit:"


def _services(interaction: discord.Interaction) -> Services | None:
    return getattr(interaction.client, "services", None)


async def _job_for(interaction: discord.Interaction, job_id: str) -> tuple[Services, Job] | None:
    services = _services(interaction)
    if services is None:
        await answer(interaction, STARTING_MESSAGE)
        return None
    job = await services.store.get_job(job_id)
    if job is None:
        await answer(interaction, f"I have no record of job `{job_id}` any more.")
        return None
    return services, job


def may_manage(interaction: discord.Interaction, job: Job) -> bool:
    """The requester, or a member with Manage Server (checked here, by the bot itself:
    Discord shows buttons to everyone who can see the message)."""
    if interaction.user.id == job.user_id:
        return True
    permissions = interaction.permissions
    if permissions is not None and (permissions.manage_guild or permissions.administrator):
        return True
    member = interaction.user
    return isinstance(member, discord.Member) and member.guild_permissions.manage_guild


def _stored_input(services: Services, path: str | None) -> StoredImage | None:
    """A stored image that still exists on disk, else RequestRejected."""
    if path is None:
        return None
    if not os.path.isfile(services.results_dir / path):
        raise RequestRejected(
            "The image this job started from is no longer on the bot's disk; attach it again "
            "with `/edit` or the **Edit image** context menu."
        )
    return StoredImage(path)


def reroll_request(services: Services, job: Job) -> JobRequest:
    """Same prompt and parameters as `job`, a new seed."""
    params = job.params
    width, height = job_size(services.settings, job)
    return JobRequest(
        kind=JobKind.REROLL,
        prompt=job.prompt,
        width=width,
        height=height,
        iterations=min(job.iterations, services.settings.max_iterations),
        seed=None,
        init_image=_stored_input(services, job.input_path),
        image_prompt=_stored_input(services, params.get("image_prompt_path")),
        replace=params.get("replace"),
        parent_id=job.id,
    )


class _JobButton:
    """What the job buttons share: the button with its job id in the custom id, re-created
    from that id on a click, and the job looked up before `on_click` runs.

    A mixin placed before `DynamicItem` in each button's bases, not a `DynamicItem`
    subclass: `DynamicItem.__init_subclass__` demands a `template=` on every subclass
    statement, so an intermediate base class cannot be one. Subclasses set the four
    class attributes below and pass `template=PREFIX + _JOB`.
    """

    PREFIX: ClassVar[str]
    LABEL: ClassVar[str]
    STYLE: ClassVar[discord.ButtonStyle]
    EMOJI: ClassVar[str]

    def __init__(self, job_id: str) -> None:
        super().__init__(discord.ui.Button(  # DynamicItem.__init__, next in the MRO
            label=self.LABEL, style=self.STYLE, emoji=self.EMOJI, custom_id=self.PREFIX + job_id
        ))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: Any) -> Self:
        return cls(match["job_id"])

    async def callback(self, interaction: discord.Interaction) -> None:
        found = await _job_for(interaction, self.job_id)
        if found is None:
            return
        services, job = found
        await self.on_click(interaction, services, job)

    async def on_click(self, interaction: discord.Interaction, services: Services, job: Job) -> None:
        raise NotImplementedError


class CancelButton(_JobButton, discord.ui.DynamicItem[discord.ui.Button], template=CANCEL_PREFIX + _JOB):
    """Stops a queued or running job; only its requester or an admin may."""

    PREFIX = CANCEL_PREFIX
    LABEL = "Cancel"
    STYLE = discord.ButtonStyle.secondary
    EMOJI = "✖️"

    async def on_click(self, interaction: discord.Interaction, services: Services, job: Job) -> None:
        if not may_manage(interaction, job):
            await answer(interaction, f"Only <@{job.user_id}>, who asked for this image, or a "
                                      "server admin (Manage Server) can cancel it.")
            return
        if job.status.is_finished:
            await answer(interaction, f"Job `{job.id}` has already {job.status.value} "
                                      f"({'finished' if job.status is JobStatus.DONE else 'ended'}).")
            return
        runner = getattr(interaction.client, "runner", None)
        if runner is None:
            await answer(interaction, STARTING_MESSAGE)
            return
        await defer(interaction)
        outcome = await runner.cancel(job.id, by_user_id=interaction.user.id)
        await answer(interaction, outcome)


class RerollButton(_JobButton, discord.ui.DynamicItem[discord.ui.Button], template=REROLL_PREFIX + _JOB):
    """Queues the same prompt and parameters with a new seed (a new job for the clicker)."""

    PREFIX = REROLL_PREFIX
    LABEL = "Reroll"
    STYLE = discord.ButtonStyle.primary
    EMOJI = "🎲"

    async def on_click(self, interaction: discord.Interaction, services: Services, job: Job) -> None:
        try:
            request = reroll_request(services, job)
        except RequestRejected as error:
            await answer(interaction, str(error))
            return
        await submit_and_answer(interaction, request)


class EditButton(_JobButton, discord.ui.DynamicItem[discord.ui.Button], template=EDIT_PREFIX + _JOB):
    """Opens a modal for a prompt, then edits this result."""

    PREFIX = EDIT_PREFIX
    LABEL = "Edit"
    STYLE = discord.ButtonStyle.secondary
    EMOJI = "✏️"

    async def on_click(self, interaction: discord.Interaction, services: Services, job: Job) -> None:
        if job.status is not JobStatus.DONE or not job.result_path:
            await answer(interaction, f"Job `{job.id}` has no finished image to edit.")
            return
        try:
            source = _stored_input(services, job.result_path)
        except RequestRejected as error:
            await answer(interaction, str(error))
            return
        await interaction.response.send_modal(
            EditModal(source=source, size=job_size(services.settings, job), parent_id=job.id)
        )


class EditModal(discord.ui.Modal, title="Edit image"):
    """Asks for the edit prompt (and optionally what to replace), then queues the edit.

    `source` is the image to edit: a stored image (a result), or a Discord attachment
    (context menu on someone's message), checked and downloaded only once the modal is
    submitted, since most of the cost of a bad file should fall on no one.
    """

    prompt: discord.ui.TextInput = discord.ui.TextInput(
        label="Prompt", custom_id="prompt", placeholder="withered flowers  (a + b mixes, text:2 weights)",
        max_length=500, required=True,
    )
    replace: discord.ui.TextInput = discord.ui.TextInput(
        label="Replace (optional)", custom_id="replace", placeholder="e.g. flowers: only that part changes",
        max_length=100, required=False,
    )

    def __init__(self, *, source: InputImage | discord.Attachment, size: tuple[int, int] | None,
                 parent_id: str | None = None) -> None:
        super().__init__(timeout=15 * 60)
        self.source = source
        self.size = size
        self.parent_id = parent_id

    async def on_submit(self, interaction: discord.Interaction) -> None:
        from bot.attachments import AttachmentError, fetch_image
        from bot.submission import fit_size

        services = _services(interaction)
        if services is None:
            await answer(interaction, STARTING_MESSAGE)
            return
        prompt = self.prompt.value or ""
        try:
            validate_prompt(prompt)
            replace = validate_replace(self.replace.value)
            iterations = validate_iterations(services.settings, None)
            source = self.source
            size = self.size
            if isinstance(source, discord.Attachment):  # check and download it now
                await defer(interaction)
                source = await fetch_image(source)
                size = fit_size(services.settings, source.width, source.height)
        except (RequestRejected, AttachmentError) as error:
            await answer(interaction, str(error))
            return
        assert size is not None
        await submit_and_answer(interaction, JobRequest(
            kind=JobKind.EDIT, prompt=prompt, width=size[0], height=size[1],
            iterations=iterations, init_image=source, replace=replace, parent_id=self.parent_id,
        ))

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:
        log.exception("edit modal failed", exc_info=error)
        await answer(interaction, "Sorry, something went wrong; please try again.")


def progress_view(job_id: str) -> discord.ui.View:
    """The buttons of a waiting or running job's message."""
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return view


def result_view(job_id: str) -> discord.ui.View:
    """The buttons of a finished image."""
    view = discord.ui.View(timeout=None)
    view.add_item(RerollButton(job_id))
    view.add_item(EditButton(job_id))
    return view


DYNAMIC_ITEMS = (CancelButton, RerollButton, EditButton)
