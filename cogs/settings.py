"""`/settings`: a member's own default shape and iterations on this server.

They fill in what a member leaves out: `shape` for `/imagine` without `size` (a starting
image without `size` keeps its own shape), `iterations` for `/imagine` and `/edit` without
`iterations`. An option given still wins. They stay within the server's limits: shapes are
`bot.requests.SHAPES`, iterations at most MAX_ITERATIONS, and a default above a
MAX_ITERATIONS lowered later is capped when it applies (`bot.requests.member_iterations`),
not refused. Stored per member per server (`Store.update_member_settings`); `/usage` shows
them too (`cogs.info.member_defaults_lines`).
"""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot import render
from bot.app import ImagineBot
from bot.errors import UserError
from cogs.generate import SIZE_CHOICES
from cogs.info import member_defaults_lines

#: What `reset` puts back to the server's default.
RESET_FIELDS: dict[str, tuple[str, ...]] = {
    "shape": ("shape",),
    "iterations": ("iterations",),
    "both": ("shape", "iterations"),
}
RESET_CHOICES = [
    app_commands.Choice(name="shape", value="shape"),
    app_commands.Choice(name="iterations", value="iterations"),
    app_commands.Choice(name="both", value="both"),
]


def requested_changes(settings_max: int, shape: str | None, iterations: int | None,
                      reset: str | None) -> dict[str, str | int | None]:
    """The fields `/settings` changes (None = back to the server's default); a refusal for
    an iterations count out of range, or a field both set and reset."""
    changes: dict[str, str | int | None] = {}
    if shape is not None:
        changes["shape"] = shape
    if iterations is not None:
        if not 1 <= iterations <= settings_max:
            raise UserError(render.settings_iterations_out_of_range(iterations, settings_max))
        changes["iterations"] = iterations
    for field_name in RESET_FIELDS.get(reset or "", ()):
        if field_name in changes:
            raise UserError(render.settings_reset_conflict(field_name))
        changes[field_name] = None
    return changes


class MemberSettingsCog(commands.Cog, name="Settings"):
    """`/settings` (every member, about themselves only)."""

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @app_commands.command(name="settings", description="Your own default shape and iterations on this server")
    @app_commands.describe(
        shape="Your default shape for /imagine without size",
        iterations="Your default iterations for /imagine and /edit without iterations",
        reset="Put the server's default back for this",
    )
    @app_commands.choices(shape=SIZE_CHOICES, reset=RESET_CHOICES)
    @app_commands.guild_only()
    async def settings(
        self,
        interaction: discord.Interaction,
        shape: app_commands.Choice[str] | None = None,
        iterations: app_commands.Range[int, 1, 100_000] | None = None,
        reset: app_commands.Choice[str] | None = None,
    ) -> None:
        services = self.bot.services
        assert interaction.guild_id is not None, "guild_only"
        changes = requested_changes(services.settings.max_iterations,
                                    shape.value if shape else None, iterations,
                                    reset.value if reset else None)
        store = services.store
        if changes:
            member = await store.update_member_settings(interaction.guild_id, interaction.user.id, **changes)
        else:
            member = await store.get_member_settings(interaction.guild_id, interaction.user.id)
        text = render.settings_text(member_defaults_lines(services, member), changed=bool(changes))
        await interaction.response.send_message(text, ephemeral=True)


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(MemberSettingsCog(bot))
