"""`/quota ...`: server admins decide who may make how many images per rolling 24 h; and
`/status`: how the image engine and the queue are doing.

Who counts as an admin: members with Manage Server (or Administrator). The group carries
`default_permissions(manage_guild=True)`, which only decides who *sees* the commands (a
server owner can grant them to anyone under Server Settings -> Integrations), so the cog's
`interaction_check` (`bot.permissions.require_admin`) checks the permission itself before
any command runs, and refuses others through the one error handler.

Zero versus unlimited, the one trap here: in the operator's settings DEFAULT_DAILY_QUOTA=0
means unlimited, but on Discord `images:0` always means "may not make images" and
unlimited is always said with an explicit `unlimited:True` option (or the role command),
so no number ever means two things. The command descriptions say so.

All answers are ephemeral (quota decisions are between admins, not a channel
announcement) and say what changed, from what to what (`bot.render.quotas`).

`/status` is where an admin learns why images wait: the engine's state, device and models,
and its last error in full. Members only ever read "the image engine is down"; the error
can name the server's files, so it is shown here, to admins, privately, and in the log.

`/blocklist add|remove|list` keeps this server's blocked words and phrases (how they match:
`bot.blocklist`; the check itself runs where every request is queued, `bot.enqueue`), and
`/stats` shows this server's last 7 days (what each figure counts: `bot.stats`).
"""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot import render
from bot.app import ImagineBot
from bot.blocklist import MAX_TERMS, fold, parse_terms
from bot.errors import UserError
from bot.permissions import admin_only, member_role_ids, require_admin
from bot.quota_status import QuotaStatus
from bot.stats import guild_stats
from bot.store import AddOutcome

#: The largest number of images `/quota set` and `/quota default` accept: far beyond what
#: one GPU makes in 24 h, so it never gets in the way, while keeping typos like
#: 2000000000 out of the database.
MAX_IMAGES = 100_000

Images = app_commands.Range[int, 0, MAX_IMAGES]


def chosen_limit(images: int | None, unlimited: bool) -> tuple[bool, int | None]:
    """(valid, limit) from the `images`/`unlimited` option pair; limit None = unlimited.

    Exactly one must be given: `images:5 unlimited:True` is contradictory and neither
    would leave "0 or unlimited?" to guesswork, which is the ambiguity this avoids.
    """
    if unlimited and images is not None:
        return False, None
    if unlimited:
        return True, None
    if images is None:
        return False, None
    return True, images


def guild_id(interaction: discord.Interaction) -> int:
    """The server an admin command runs in (`require_admin` refuses it anywhere else)."""
    assert interaction.guild_id is not None, "require_admin lets no command run outside a server"
    return interaction.guild_id


class Admin(commands.Cog):
    """The `/quota` and `/blocklist` command groups, `/status` and `/stats` (Manage Server only)."""

    quota = app_commands.Group(
        name="quota",
        description="Daily image quotas on this server (needs Manage Server)",
        guild_only=True,
        default_permissions=discord.Permissions(manage_guild=True),
    )

    blocklist = app_commands.Group(
        name="blocklist",
        description="Words and phrases prompts may not use on this server (needs Manage Server)",
        guild_only=True,
        default_permissions=discord.Permissions(manage_guild=True),
    )

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        # discord.py calls this before every app command of the cog (see the module doc).
        return require_admin(interaction)

    async def _status(self, interaction: discord.Interaction, member: discord.Member) -> QuotaStatus:
        return await self.bot.services.quotas.check(
            interaction.guild_id, member.id, member_role_ids(member, interaction.guild_id)
        )

    # -------------------------------------------------------------- per member

    @quota.command(name="set", description="Give one member their own daily limit (beats roles and defaults)")
    @app_commands.describe(
        member="Who the limit is for",
        images="Images per rolling 24 h; 0 = this member may not make images",
        unlimited="True = no limit for this member (instead of images)",
    )
    async def set_(
        self,
        interaction: discord.Interaction,
        member: discord.Member,
        images: Images | None = None,
        unlimited: bool = False,
    ) -> None:
        valid, limit = chosen_limit(images, unlimited)
        if not valid:
            raise UserError(render.QUOTA_CHOOSE_ONE)
        services = self.bot.services
        before = await self._status(interaction, member)
        await services.store.set_quota_override(guild_id(interaction), member.id, limit)
        after = await self._status(interaction, member)
        await interaction.response.send_message(
            render.quota_set(member.mention, limit, before, after), ephemeral=True)

    @quota.command(
        name="reset", description="Remove a member's own limit: roles and the server default apply again"
    )
    @app_commands.describe(member="Whose own limit to remove")
    async def reset(self, interaction: discord.Interaction, member: discord.Member) -> None:
        services = self.bot.services
        removed = await services.store.reset_quota_override(guild_id(interaction), member.id)
        after = await self._status(interaction, member)
        await interaction.response.send_message(
            render.quota_reset(member.mention, after, removed=removed), ephemeral=True)

    # -------------------------------------------------------------- server-wide

    @quota.command(name="default", description="Set this server's default daily limit for everyone")
    @app_commands.describe(
        images="Images per rolling 24 h per member; 0 = nobody may make images by default",
        unlimited="True = no limit by default (instead of images)",
    )
    async def default(
        self,
        interaction: discord.Interaction,
        images: Images | None = None,
        unlimited: bool = False,
    ) -> None:
        valid, limit = chosen_limit(images, unlimited)
        if not valid:
            raise UserError(render.QUOTA_CHOOSE_ONE)
        store = self.bot.services.store
        before = await self._server_default_text(guild_id(interaction))
        await store.set_guild_default_quota(guild_id(interaction), limit)
        await interaction.response.send_message(render.quota_default_set(limit, before), ephemeral=True)

    @quota.command(
        name="reset-default", description="Go back to the bot's configured default limit on this server"
    )
    async def reset_default(self, interaction: discord.Interaction) -> None:
        services = self.bot.services
        removed = await services.store.reset_guild_default_quota(guild_id(interaction))
        await interaction.response.send_message(
            render.quota_default_reset(services.quotas.default_daily_quota, removed=removed),
            ephemeral=True)

    @quota.command(
        name="unlimited", description="Make a role's members unlimited, or undo it with remove:True"
    )
    @app_commands.describe(
        role="The role whose members may make any number of images",
        remove="True = this role is no longer unlimited",
    )
    async def unlimited(
        self, interaction: discord.Interaction, role: discord.Role, remove: bool = False
    ) -> None:
        # An explicit add/remove rather than a toggle: running the same command twice
        # must not silently undo the first.
        store = self.bot.services.store
        if remove:
            changed = await store.remove_unlimited_role(guild_id(interaction), role.id)
            text = render.role_not_unlimited(role.mention, changed=changed)
        else:
            changed = await store.add_unlimited_role(guild_id(interaction), role.id)
            text = render.role_unlimited(role.mention, changed=changed)
        await interaction.response.send_message(text, ephemeral=True)

    # -------------------------------------------------------------- looking

    @quota.command(name="show", description="This server's quota settings, or one member's limit and usage")
    @app_commands.describe(member="Whose limit and usage to show (leave out for the server's settings)")
    async def show(self, interaction: discord.Interaction, member: discord.Member | None = None) -> None:
        services = self.bot.services
        if member is not None:
            status = await self._status(interaction, member)
            await interaction.response.send_message(
                render.member_quota(member.mention, status, services.quotas.clock()), ephemeral=True)
            return
        guild = guild_id(interaction)
        text = render.server_quotas(await self._server_default_text(guild),
                                    await services.store.list_unlimited_roles(guild),
                                    await services.store.list_quota_overrides(guild))
        await interaction.response.send_message(text, ephemeral=True)

    # -------------------------------------------------------------- the engine

    @app_commands.command(
        name="status", description="The image engine and the queue: state, models, last error (Manage Server)"
    )
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    async def status(self, interaction: discord.Interaction) -> None:
        services = self.bot.services
        today = render.utc_day_start(services.quotas.clock())
        finished = await services.store.count_finished_since(today)
        settings = services.settings
        embed = render.status_embed(
            services.engine.status,
            queued=len(services.scheduler),
            running=list(services.running.values()),
            finished_today=finished,
            configured_models=(settings.vqgan_model, settings.clip_model),
            workers=services.engine.workers,
        )
        await interaction.response.send_message(embed=embed, ephemeral=True)

    # -------------------------------------------------------------- the blocklist

    @blocklist.command(name="add", description="Block words or phrases in prompts on this server")
    @app_commands.describe(
        terms="A word or phrase; several separated by commas. Whole words, any case",
    )
    async def blocklist_add(self, interaction: discord.Interaction,
                            terms: app_commands.Range[str, 1, 1000]) -> None:
        guild = guild_id(interaction)
        wanted = parse_terms(terms)
        store = self.bot.services.store
        existing = await store.list_blocked_terms(guild)
        new = [key for key in wanted if key not in existing]
        if len(existing) + len(new) > MAX_TERMS:
            raise UserError(render.blocklist_full(len(existing), len(new), MAX_TERMS))
        added: list[str] = []
        already: list[str] = []
        full: list[str] = []
        for key, term in wanted.items():
            outcome = await store.add_blocked_term(guild, key, term, added_by=interaction.user.id,
                                                   max_terms=MAX_TERMS)
            if outcome is AddOutcome.ADDED:
                added.append(term)
            elif outcome is AddOutcome.ALREADY:
                already.append(existing.get(key, term))
            else:  # only when another command filled the list meanwhile
                full.append(term)
        count = len(await store.list_blocked_terms(guild))
        await interaction.response.send_message(
            render.blocklist_added(added, already, full, count, MAX_TERMS), ephemeral=True)

    @blocklist.command(name="remove", description="Unblock words or phrases on this server")
    @app_commands.describe(terms="An entry of /blocklist list; several separated by commas")
    async def blocklist_remove(self, interaction: discord.Interaction,
                               terms: app_commands.Range[str, 1, 1000]) -> None:
        guild = guild_id(interaction)
        store = self.bot.services.store
        removed: list[str] = []
        missing: list[str] = []
        for key, term in parse_terms(terms).items():
            found = await store.remove_blocked_term(guild, key)
            if found is None:
                missing.append(term)
            else:
                removed.append(found)
        count = len(await store.list_blocked_terms(guild))
        await interaction.response.send_message(
            render.blocklist_removed(removed, missing, count), ephemeral=True)

    @blocklist_remove.autocomplete("terms")
    @admin_only  # autocompletes skip the cog's interaction_check: the list is for admins
    async def blocklist_remove_complete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        """Entries that contain what is typed after the last comma, completing that part.

        Discord takes at most 25 choices of at most 100 characters each: an entry whose
        completed value would be longer is offered alone, without the terms before it."""
        if interaction.guild_id is None:
            return []
        done, _comma, typing = current.rpartition(",")
        prefix = f"{done.strip()}, " if done.strip() else ""
        typed = fold(typing.strip())
        entries = (await self.bot.services.store.list_blocked_terms(interaction.guild_id)).values()
        matches = [term for term in entries if typed in fold(term)]
        return [app_commands.Choice(name=term, value=prefix + term if len(prefix + term) <= 100 else term)
                for term in matches[:25]]

    @blocklist.command(name="list", description="The words and phrases blocked on this server")
    async def blocklist_list(self, interaction: discord.Interaction) -> None:
        terms = await self.bot.services.store.list_blocked_terms(guild_id(interaction))
        await interaction.response.send_message(
            render.blocklist_list(list(terms.values()), MAX_TERMS), ephemeral=True)

    # -------------------------------------------------------------- figures

    @app_commands.command(
        name="stats",
        description="This server's last 7 days: images, top members, GPU time, waits, failures (Manage Server)",
    )
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    async def stats(self, interaction: discord.Interaction) -> None:
        store = self.bot.services.store
        figures = await guild_stats(store, guild_id(interaction), store.clock())
        await interaction.response.send_message(embed=render.stats_embed(figures), ephemeral=True)

    async def _server_default_text(self, guild_id: int) -> str:
        """`10 images per 24 h, this server's own` or `..., the bot's default`."""
        services = self.bot.services
        own = await services.store.get_guild_default_quota(guild_id)
        if own is not None:
            return render.server_default_quota(own.limit, own=True)
        return render.server_default_quota(services.quotas.default_daily_quota, own=False)


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(Admin(bot))
