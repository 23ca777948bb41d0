"""The generation surface: `/imagine`, `/edit`, the "Edit image" context menu, and the
job buttons (their classes live in `bot.views`; registered here).

This cog only reads Discord input: it builds a `JobRequest` with `bot.requests` and queues
it with `bot.enqueue` (both shared with the buttons and the modal); which image an edit
starts from is `bot.edit_source`'s; refusals are raised and answered by the one error
handler (`bot.interactions`); the work is `bot.runner`'s.
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import ImagineBot
from bot.attachments import CheckedImage, check_metadata, fetch_image
from bot.edit_source import Found, from_upload, latest_image, menu_target
from bot.enqueue import submit_and_answer
from bot.interactions import defer
from bot.jobs import JobKind
from bot.render import SHAPE_LABELS
from bot.requests import (
    SHAPES,
    JobRequest,
    fit_size,
    member_iterations,
    member_shape,
    shape_size,
    validate_iterations,
    validate_prompt,
    validate_replace,
    validate_seed,
)
from bot.store import MemberSettings
from bot.views import DYNAMIC_ITEMS, EditModal
from engine.limits import MAX_SEED

log = logging.getLogger(__name__)

#: `/imagine size:` and `/settings shape:` offer the same shapes, under the same labels.
SIZE_CHOICES = [app_commands.Choice(name=SHAPE_LABELS[shape], value=shape) for shape in SHAPES]


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
        defaults = await self._member_defaults(interaction)
        if iterations is None:
            iterations = member_iterations(settings, defaults)
        iterations = validate_iterations(settings, iterations)
        seed = validate_seed(seed)
        # The member's own shape (/settings) when none is asked; a starting image without a
        # shape asked keeps its own (below), which says more than a stored preference.
        shape = size.value if size else (member_shape(defaults) if init_image is None else None)
        width, height = shape_size(settings, shape)
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
        services = self.bot.services
        settings = services.settings
        validate_prompt(prompt)
        replace = validate_replace(replace)
        if iterations is None:
            iterations = member_iterations(settings, await self._member_defaults(interaction))
        iterations = validate_iterations(settings, iterations)
        seed = validate_seed(seed)
        if image is not None:
            self._check(image)
        await defer(interaction)
        if image is not None:
            found = await from_upload(services, image)
        else:
            found = await latest_image(services, interaction, self._me_id())
        width, height = found.size
        await submit_and_answer(interaction, JobRequest(
            kind=JobKind.EDIT, prompt=prompt, width=width, height=height, iterations=iterations,
            seed=seed, init_image=found.image, replace=replace, parent_id=found.parent_id,
            source=found.source,
        ))

    # ------------------------------------------------------------------ context menu

    async def edit_image_menu(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """Right-click a message -> Apps -> Edit image: a modal asks for the prompt."""
        target = await menu_target(self.bot.services, message, self._me_id())
        if isinstance(target, Found):
            await interaction.response.send_modal(EditModal(
                source=target.image, size=target.size, parent_id=target.parent_id, shown=target.source,
            ))
            return
        attachment, shown = target
        self._check(attachment)  # before the modal: no typing for a file we'd refuse
        await interaction.response.send_modal(EditModal(source=attachment, size=None, shown=shown))

    async def _member_defaults(self, interaction: discord.Interaction) -> MemberSettings:
        """The asker's own defaults in this server (`/settings`); none outside a server."""
        return await self.bot.services.store.get_member_settings(interaction.guild_id, interaction.user.id)

    def _me_id(self) -> int:
        me = self.bot.user
        assert me is not None, "interactions arrive only once the bot is logged in"
        return me.id


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(Generate(bot))
