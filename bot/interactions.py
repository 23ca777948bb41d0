"""Answering interactions: the private answer, the early acknowledgement, and the one
error handler every command, button and modal ends in.

Why one handler: a command that catches its own errors forgets one sooner or later, and
an exception after `defer(thinking=True)` leaves the user looking at "thinking…" for
ever. Commands, buttons and modals raise; `report_error` decides what the user reads.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping

import discord
from discord import app_commands

from bot import render
from bot.errors import UserError
from bot.services import Services

log = logging.getLogger(__name__)


def services_of(interaction: discord.Interaction) -> Services:
    """The bot's services, for the code that Discord calls without a cog (buttons, modals).

    `ImagineBot.setup_hook` opens them before any cog, button or modal is registered, so
    no interaction can arrive before they exist; a missing one is a programming error.
    """
    services = getattr(interaction.client, "services", None)
    if not isinstance(services, Services):
        raise RuntimeError("the bot's services are not open (is this running in ImagineBot?)")
    return services


async def answer(interaction: discord.Interaction, text: str | None = None, *,
                 embed: discord.Embed | None = None) -> None:
    """Answer only the person who asked: the first response, or the deferred one (with
    `embed` under the text, if given)."""
    if interaction.response.is_done():
        await interaction.edit_original_response(content=text, embed=embed, view=None)
    elif embed is not None:
        await interaction.response.send_message(text, embed=embed, ephemeral=True)
    else:
        await interaction.response.send_message(text, ephemeral=True)


async def defer(interaction: discord.Interaction) -> None:
    """Acknowledge within Discord's 3 seconds before slow work (downloads, the database)."""
    if not interaction.response.is_done():
        await interaction.response.defer(ephemeral=True, thinking=True)


def unwrap(error: BaseException) -> BaseException:
    """The exception a command raised, out of discord.py's `CommandInvokeError` wrapper."""
    while isinstance(error, app_commands.CommandInvokeError):
        error = error.original
    return error


async def report_error(interaction: discord.Interaction, error: BaseException) -> None:
    """The one error handler: a `UserError`'s text as is, anything else an apology with a
    reference id that the log repeats beside the traceback. Never raises."""
    error = unwrap(error)
    if isinstance(error, UserError):
        text = str(error)
        log.debug("interaction %s refused: %s", interaction.id, text)
    else:
        ref = secrets.token_hex(4)
        log.error("unexpected error [ref %s] in %s", ref, _describe(interaction), exc_info=error)
        text = render.apology(ref)
    try:
        await answer(interaction, text)
    except discord.HTTPException as failure:  # the interaction expired, or Discord is down
        log.warning("could not answer interaction %s: %s", interaction.id, failure)


def _describe(interaction: discord.Interaction) -> str:
    command = interaction.command
    if command is not None:
        return f"/{command.qualified_name}"
    data: Mapping[str, object] = interaction.data or {}
    custom_id = data.get("custom_id")
    return f"component {custom_id}" if custom_id else f"interaction type {interaction.type}"


class ImagineTree(app_commands.CommandTree):
    """The command tree, with the one error handler for every slash command and menu."""

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError, /) -> None:
        await report_error(interaction, error)
