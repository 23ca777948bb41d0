"""Who may do what: admins (Manage Server), a job's requester, and the roles quotas read.

One definition each, used by every command and button: `default_permissions` on a
command only decides who *sees* it (a server owner can grant it to anyone under Server
Settings -> Integrations), so the bot checks the permission itself, with `admin_only`.
"""

from __future__ import annotations

import discord
from discord import app_commands

from bot import render
from bot.errors import NotAllowed


def is_admin(interaction: discord.Interaction) -> bool:
    """Does the invoking member have Manage Server (or Administrator) in this server?

    `interaction.permissions` is computed by Discord for this member in this channel, so
    it needs no member cache. Outside a server nobody is an admin.
    """
    if interaction.guild_id is None:
        return False
    permissions = interaction.permissions
    return permissions.administrator or permissions.manage_guild


def may_manage(interaction: discord.Interaction, owner_id: int) -> bool:
    """The requester of a job, or an admin (Discord shows buttons to everyone who can see
    the message, so the bot decides)."""
    return interaction.user.id == owner_id or is_admin(interaction)


def require_admin(interaction: discord.Interaction) -> bool:
    """The admin check, as a predicate for `app_commands.check` or `interaction_check`."""
    if interaction.guild_id is None:
        raise NotAllowed(render.GUILD_ONLY)
    if not is_admin(interaction):
        raise NotAllowed(render.NOT_ADMIN)
    return True


#: Decorator for admin commands, beside `app_commands.default_permissions(manage_guild=True)`.
admin_only = app_commands.check(require_admin)


def member_role_ids(user: discord.abc.User, guild_id: int | None) -> list[int]:
    """The role ids quotas read: the member's roles plus @everyone.

    @everyone (whose id is the server's id) is included so that an admin can make the
    whole server unlimited with `/quota unlimited @everyone`. Outside a server: none.
    """
    if guild_id is None:
        return []
    ids = {guild_id}
    if isinstance(user, discord.Member):
        ids.update(role.id for role in user.roles)
    return sorted(ids)
