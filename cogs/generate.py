"""The generation surface: `/imagine`, `/edit`, the "Edit image" context menu, and the
job buttons (their classes live in `bot.views`; registered here).

This cog only reads Discord input: it builds a `JobRequest` with `bot.requests` and queues
it with `bot.enqueue` (both shared with the buttons and the modal); refusals are raised and
answered by the one error handler (`bot.interactions`); the work is `bot.runner`'s.
"""

from __future__ import annotations

import logging
import os

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import ImagineBot
from bot.attachments import CheckedImage, check_metadata, fetch_image, first_image_attachment
from bot.enqueue import submit_and_answer
from bot.errors import UserError
from bot.interactions import defer
from bot.jobs import Job, JobKind, JobStatus
from bot.requests import (
    SHAPES,
    InputImage,
    JobRequest,
    StoredImage,
    fit_size,
    job_size,
    shape_size,
    validate_iterations,
    validate_prompt,
    validate_replace,
    validate_seed,
)
from bot.views import DYNAMIC_ITEMS, EditModal
from engine.limits import MAX_SEED

log = logging.getLogger(__name__)

#: How far back `/edit` without an image looks for "the latest image in the channel".
HISTORY_LIMIT = 50

NO_IMAGE_MESSAGE = (
    "I found no image to edit in this channel. Attach one: `/edit prompt:withered flowers "
    "image:<file>`, or right-click a message with an image -> Apps -> **Edit image**, or "
    "make one first with `/imagine`."
)
NO_IMAGE_IN_MESSAGE = (
    "That message has no image I can edit (PNG, JPEG, WebP or GIF). "
    "Pick a message with a picture, or use `/edit` with `image:`."
)

SIZE_CHOICES = [
    app_commands.Choice(name="square (1:1)", value="square"),
    app_commands.Choice(name="portrait (3:4)", value="portrait"),
    app_commands.Choice(name="landscape (4:3)", value="landscape"),
    app_commands.Choice(name="wide (16:9)", value="wide"),
    app_commands.Choice(name="tall (9:16)", value="tall"),
]
assert {c.value for c in SIZE_CHOICES} == set(SHAPES)

#: A found image to edit: the image, its working size, and the job it came from (if any).
Found = tuple[InputImage, tuple[int, int], str | None]


class Generate(commands.Cog):
    """Making and editing images."""

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        # Context menus cannot be declared as cog methods; built here, added in cog_load.
        self.edit_menu = app_commands.ContextMenu(name="Edit image", callback=self.edit_image_menu)
        app_commands.guild_only()(self.edit_menu)

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.edit_menu)
        self.bot.add_dynamic_items(*DYNAMIC_ITEMS)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.edit_menu.name, type=self.edit_menu.type)
        self.bot.remove_dynamic_items(*DYNAMIC_ITEMS)

    def _check(self, attachment: discord.Attachment) -> None:
        check_metadata(attachment, max_bytes=self.bot.services.settings.max_image_bytes)

    async def _fetch(self, attachment: discord.Attachment) -> CheckedImage:
        return await fetch_image(attachment, max_bytes=self.bot.services.settings.max_image_bytes)

    # ------------------------------------------------------------------ /imagine

    @app_commands.command(name="imagine", description="Make an image from a text prompt")
    @app_commands.describe(
        prompt="What to draw. Mix ideas with +, weight one with text:2, steer away with text:-1",
        size="Shape of the image (default: the server's default size)",
        iterations="More iterations = more detail, slower (default set by the server)",
        seed="Same prompt + same seed = same image (default: random)",
        init_image="Start from this picture instead of noise",
        image_prompt="A picture the result should look like",
    )
    @app_commands.choices(size=SIZE_CHOICES)
    @app_commands.guild_only()
    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, 500],
        size: app_commands.Choice[str] | None = None,
        iterations: app_commands.Range[int, 1, 100_000] | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        init_image: discord.Attachment | None = None,
        image_prompt: discord.Attachment | None = None,
    ) -> None:
        settings = self.bot.services.settings
        validate_prompt(prompt)
        iterations = validate_iterations(settings, iterations)
        seed = validate_seed(seed)
        width, height = shape_size(settings, size.value if size else None)
        for attachment in (init_image, image_prompt):
            if attachment is not None:
                self._check(attachment)
        init: CheckedImage | None = None
        looks_like: CheckedImage | None = None
        if init_image is not None or image_prompt is not None:
            await defer(interaction)  # downloads can take a moment
            init = await self._fetch(init_image) if init_image is not None else None
            looks_like = await self._fetch(image_prompt) if image_prompt is not None else None
        if init is not None and size is None:  # no shape asked: keep the picture's shape
            width, height = fit_size(settings, init.width, init.height)
        await submit_and_answer(interaction, JobRequest(
            kind=JobKind.IMAGINE, prompt=prompt, width=width, height=height,
            iterations=iterations, seed=seed, init_image=init, image_prompt=looks_like,
        ))

    # ------------------------------------------------------------------ /edit

    @app_commands.command(name="edit", description="Change an image with a text prompt")
    @app_commands.describe(
        prompt="What the image should become, e.g. withered flowers",
        image="The image to edit (default: the latest image in this channel)",
        replace="Change only this part of the image, e.g. flowers",
        iterations="More iterations = stronger change, slower (default set by the server)",
        seed="Same settings + same seed = same result (default: random)",
    )
    @app_commands.guild_only()
    async def edit(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, 500],
        image: discord.Attachment | None = None,
        replace: app_commands.Range[str, 1, 100] | None = None,
        iterations: app_commands.Range[int, 1, 100_000] | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
    ) -> None:
        settings = self.bot.services.settings
        validate_prompt(prompt)
        replace = validate_replace(replace)
        iterations = validate_iterations(settings, iterations)
        seed = validate_seed(seed)
        if image is not None:
            self._check(image)
        await defer(interaction)
        source: InputImage
        parent_id = None
        if image is not None:
            checked = await self._fetch(image)
            source = checked
            width, height = fit_size(settings, checked.width, checked.height)
        else:
            found = await self.latest_image(interaction)
            if found is None:
                raise UserError(NO_IMAGE_MESSAGE)
            source, (width, height), parent_id = found
        await submit_and_answer(interaction, JobRequest(
            kind=JobKind.EDIT, prompt=prompt, width=width, height=height, iterations=iterations,
            seed=seed, init_image=source, replace=replace, parent_id=parent_id,
        ))

    async def latest_image(self, interaction: discord.Interaction) -> Found | None:
        """The newest image in the channel: (image, working size, parent job id or None).

        Looks through the last HISTORY_LIMIT messages, newest first. The bot's own result
        messages map to their result file on disk; its progress messages are skipped.
        LIMITATION: the bot does not ask for the privileged `message_content` intent, so
        Discord hides the attachments of *other users'* ordinary messages from it (they
        arrive empty; only messages that mention the bot keep theirs). Those images can
        still be edited with `image:` or the "Edit image" context menu, whose target
        message always carries its attachments. If the history can't be read at all,
        the bot's latest result in the channel (from the store) is used.
        """
        store = self.bot.services.store
        channel = interaction.channel
        me = self.bot.user
        if channel is not None and hasattr(channel, "history"):
            try:
                async for message in channel.history(limit=HISTORY_LIMIT):
                    if me is not None and message.author.id == me.id:
                        found = self._stored_result(await store.job_by_result_message(message.id))
                        if found is not None:
                            return found
                        continue  # a progress message or an answer, not an image to edit
                    attachment = first_image_attachment(message)
                    if attachment is None:
                        continue
                    checked = await self._fetch(attachment)
                    return checked, fit_size(self.bot.services.settings, checked.width, checked.height), None
            except discord.HTTPException as error:
                log.warning("cannot read the history of channel %s: %s", interaction.channel_id, error)
        return self._stored_result(await store.latest_done_job(interaction.channel_id or 0))

    def _stored_result(self, job: Job | None) -> Found | None:
        """A finished job's result as an image to edit, if its file is still on disk."""
        services = self.bot.services
        if job is None or job.status is not JobStatus.DONE or not job.result_path:
            return None
        if not os.path.isfile(services.results_dir / job.result_path):
            return None
        return StoredImage(job.result_path), job_size(services.settings, job), job.id

    # ------------------------------------------------------------------ context menu

    async def edit_image_menu(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """Right-click a message -> Apps -> Edit image: a modal asks for the prompt."""
        me = self.bot.user
        if me is not None and message.author.id == me.id:
            job = await self.bot.services.store.job_by_result_message(message.id)
            found = self._stored_result(job)
            if found is not None:
                source, size, parent_id = found
                await interaction.response.send_modal(EditModal(source=source, size=size, parent_id=parent_id))
                return
        attachment = first_image_attachment(message)
        if attachment is None:
            raise UserError(NO_IMAGE_IN_MESSAGE)
        self._check(attachment)  # before the modal: no typing for a file we'd refuse
        await interaction.response.send_modal(EditModal(source=attachment, size=None))


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(Generate(bot))
