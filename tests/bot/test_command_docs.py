"""Every command the bot registers is explained in `/help` and listed in the README's
command table (issue 11: "every new command appears in /help and in the README")."""

from __future__ import annotations

from pathlib import Path

import discord

from cogs.info import help_embed
from tests.bot.fake_engine import running_world

README = Path(__file__).resolve().parents[2] / "README.md"


def help_text() -> str:
    embed = help_embed(admin=True)
    return "\n".join(f"{field.name}\n{field.value}" for field in embed.fields)


async def registered() -> tuple[list[str], list[str]]:
    """(slash command names, context menu names) as the bot registers them."""
    async with running_world() as world:
        commands = world.bot.tree.get_commands()
        slash = [c.name for c in commands if isinstance(c, discord.app_commands.Command | discord.app_commands.Group)]
        menus = [c.name for c in commands if isinstance(c, discord.app_commands.ContextMenu)]
        return slash, menus


async def test_every_command_is_in_help_and_in_the_readme_table() -> None:
    slash, menus = await registered()
    assert {"jobs", "cancel"} <= set(slash)
    readme, explained = README.read_text(encoding="utf-8"), help_text()
    for name in slash:
        assert f"`/{name}" in readme, f"/{name} is missing from the README's command table"
        if name != "help":  # /help needs no entry in itself
            assert f"/{name}" in explained, f"/{name} is missing from /help"
    for name in menus:
        assert f"**{name}**" in readme and name in explained
