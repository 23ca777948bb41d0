"""`/help`: how to talk to the bot. (Later: `/queue` and `/usage` join this cog.)

The help text lives here as constants so that tests and README can quote the same
examples, and so the grammar stays described in one place on the Discord side
(the grammar itself is `engine/prompts.py`).
"""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

HELP_TITLE = "How to ask for an image"
HELP_DESCRIPTION = (
    "Describe the picture you want with `/imagine`. The bot draws it step by step: one "
    "message shows it forming, then the finished image arrives with its seed."
)
#: (field name, field value) pairs of the help embed, in order.
HELP_FIELDS: tuple[tuple[str, str], ...] = (
    (
        "Make an image",
        "`/imagine a forest rendered in low poly`",
    ),
    (
        "Mix ideas with `+`",
        "`/imagine a watercolor painting + a baseball game`\n"
        "Each part pulls the image toward itself. `|` separates parts too: "
        "`a castle | sunset`.",
    ),
    (
        "Weight a part with `text:weight`",
        "`/imagine a lighthouse:2 + fog` makes the lighthouse count twice as much.\n"
        "A negative weight steers away: `a city street + cars:-1`.",
    ),
    (
        "Edit an image",
        "`/edit withered flowers` edits the latest image in this channel.\n"
        "Or attach one: `/edit prompt:withered flowers image:<file>`, or right-click an "
        "image -> Apps -> **Edit image**.",
    ),
    (
        "Tips",
        "Concrete nouns and styles work best (`oil painting`, `pixel art`, "
        "`trending on artstation`). The same prompt with the same seed gives the same image.",
    ),
)


def help_embed() -> discord.Embed:
    """The embed `/help` answers with."""
    embed = discord.Embed(title=HELP_TITLE, description=HELP_DESCRIPTION, colour=discord.Colour.blurple())
    for name, value in HELP_FIELDS:
        embed.add_field(name=name, value=value, inline=False)
    return embed


class Info(commands.Cog):
    """Commands that explain the bot; they never queue work or use quota."""

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot

    @app_commands.command(name="help", description="How to write prompts: mixing, weights, editing")
    async def help(self, interaction: discord.Interaction) -> None:
        # Ephemeral: help is for the asker, not the channel.
        await interaction.response.send_message(embed=help_embed(), ephemeral=True)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Info(bot))
