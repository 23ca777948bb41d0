"""Every command the bot registers is in the README's command table and in `/help` (the
issue 11 rule "every new command appears in /help and in the README")."""

from __future__ import annotations

import re
from pathlib import Path

import discord
from discord import app_commands

from bot.app import COGS, ImagineBot
from bot.render import HELP_ADMIN_FIELD, HELP_DESCRIPTION, HELP_FIELDS
from tests.bot.conftest import make_settings

README = Path(__file__).resolve().parents[1] / "README.md"
#: /help is how one reads the help; it need not describe itself.
NOT_IN_HELP = {"help"}


async def registered_commands() -> list[app_commands.Command | app_commands.Group | app_commands.ContextMenu]:
    bot = ImagineBot(make_settings())
    try:
        for name in COGS:
            await bot.load_extension(name)
        return [*bot.tree.get_commands(),
                *bot.tree.get_commands(type=discord.AppCommandType.message),
                *bot.tree.get_commands(type=discord.AppCommandType.user)]
    finally:
        await bot.close()


def readme_command_table() -> str:
    text = README.read_text(encoding="utf-8")
    table = re.search(r"\| command \| what it does \|\n(?:\|.*\n)+", text)
    assert table is not None, "the README's command table is missing"
    return table.group()


async def test_every_command_is_in_the_readmes_command_table() -> None:
    table = readme_command_table()
    for command in await registered_commands():
        if isinstance(command, app_commands.ContextMenu):
            assert f"**{command.name}**" in table, command.name
        else:
            assert f"`/{command.name}" in table, command.name


async def test_every_slash_command_is_in_help() -> None:
    help_text = "\n".join([HELP_DESCRIPTION, *(f"{name}\n{value}" for name, value in HELP_FIELDS),
                           *HELP_ADMIN_FIELD])
    for command in await registered_commands():
        if isinstance(command, app_commands.ContextMenu):
            assert command.name in help_text, command.name
        elif command.name not in NOT_IN_HELP:
            assert f"`/{command.name}" in help_text, command.name
