"""`/quota ...` through SimCord: who may use it, what each subcommand stores, and that the
quota policy then enforces it."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import discord
import pytest
import simcord

from bot.app import ImagineBot
from bot.jobs import JobKind
from bot.quota_status import QuotaSource, QuotaStatus
from bot.quotas import WINDOW_SECONDS
from bot.services import Services
from bot.store import QuotaLimit
from tests.bot.conftest import make_settings, reply

COGS_UNDER_TEST = ("cogs.info", "cogs.admin")
CONFIGURED_DEFAULT = 5


@pytest.fixture
def simcord_bot() -> ImagineBot:
    return ImagineBot(make_settings(default_daily_quota=CONFIGURED_DEFAULT), cogs=COGS_UNDER_TEST)


@dataclass
class Server:
    """One guild with an admin (Manage Server through a role), a plain member and a
    `patrons` role held by a second member."""

    env: simcord.Env
    guild: simcord.GuildHandle
    channel: simcord.ChannelHandle
    admin: simcord.MemberActor
    alice: simcord.MemberActor
    bob: simcord.MemberActor
    patrons: simcord.RoleHandle

    @property
    def services(self) -> Services:
        services = self.env.bot.services
        assert services is not None
        return services

    async def quota(self, member: simcord.MemberActor, *roles: simcord.RoleHandle) -> QuotaStatus:
        """The policy's view of a member (role ids as the cogs pass them: @everyone + roles)."""
        role_ids = [self.guild.id, *(role.id for role in roles)]
        return await self.services.quotas.check(self.guild.id, member.id, role_ids)

    async def charge(self, member: simcord.MemberActor, n: int = 1) -> list[Any]:
        return [
            await self.services.store.add_job(
                guild_id=self.guild.id, channel_id=self.channel.id, user_id=member.id,
                kind=JobKind.IMAGINE, prompt=f"image {i}", iterations=10,
            )
            for i in range(n)
        ]


@pytest.fixture
def server(env: simcord.Env) -> Server:
    guild = env.create_guild("art club")
    channel = guild.create_text_channel("general")
    mods = guild.create_role("mods", permissions=discord.Permissions(manage_guild=True))
    patrons = guild.create_role("patrons")
    return Server(
        env=env,
        guild=guild,
        channel=channel,
        admin=guild.add_member(env.create_user("admin"), roles=[mods]),
        alice=guild.add_member(env.create_user("alice")),
        bob=guild.add_member(env.create_user("bob"), roles=[patrons]),
        patrons=patrons,
    )


# --- who may use it ------------------------------------------------------------------------


async def test_quota_commands_are_hidden_from_members_without_manage_server(server: Server) -> None:
    assert "quota set" in server.admin.available_commands(server.channel)
    assert not any(c.startswith("quota") for c in server.alice.available_commands(server.channel))


async def test_quota_commands_are_not_offered_in_direct_messages(env: simcord.Env) -> None:
    user = env.create_user("dora")
    assert "usage" in user.available_commands()
    assert not any(c.startswith("quota") for c in user.available_commands())


def test_quota_group_defaults_to_manage_server() -> None:
    from cogs.admin import Admin

    assert Admin.quota.guild_only
    assert Admin.quota.default_permissions == discord.Permissions(manage_guild=True)


#: (id, subcommand, options built from the server): every change a non-admin could try.
ATTEMPTS: list[tuple[str, str, Callable[[Server], dict[str, Any]]]] = [
    ("set-images", "quota set", lambda s: {"member": s.alice, "images": 50}),
    ("set-unlimited", "quota set", lambda s: {"member": s.alice, "unlimited": True}),
    ("reset", "quota reset", lambda s: {"member": s.alice}),
    ("default", "quota default", lambda s: {"unlimited": True}),
    ("reset-default", "quota reset-default", lambda s: {}),
    ("unlimited-role", "quota unlimited", lambda s: {"role": s.patrons}),
    ("show", "quota show", lambda s: {}),
]


@pytest.mark.parametrize(("command", "options"), [a[1:] for a in ATTEMPTS], ids=[a[0] for a in ATTEMPTS])
async def test_member_granted_the_command_by_the_owner_is_still_refused(
    server: Server, command: str, options: Callable[[Server], dict[str, Any]]
) -> None:
    # A server owner can let anyone run /quota (Integrations settings); the bot must
    # still refuse, because the permission check is its own.
    quota_command = next(c for c in server.env.bot.synced_commands if c.name == "quota")
    server.guild.set_command_permissions(quota_command, {server.alice: True})

    text = reply(await server.alice.slash(server.channel, command, **options(server)))

    assert "Manage Server" in text
    store = server.services.store
    assert await store.get_quota_override(server.guild.id, server.alice.id) is None
    assert await store.get_guild_default_quota(server.guild.id) is None
    assert await store.list_unlimited_roles(server.guild.id) == []
    assert (await server.quota(server.alice)).limit == CONFIGURED_DEFAULT


# --- /quota set and reset ------------------------------------------------------------------


async def test_quota_set_stores_the_override_and_the_policy_enforces_it(server: Server) -> None:
    text = reply(await server.admin.slash(server.channel, "quota set", member=server.alice, images=2))

    assert await server.services.store.get_quota_override(server.guild.id, server.alice.id) == QuotaLimit(2)
    assert "2 images per 24 h" in text and "was 5 images" in text
    await server.charge(server.alice, 2)
    status = await server.quota(server.alice)
    assert (status.limit, status.used, status.source) == (2, 2, QuotaSource.OVERRIDE)
    assert not status.allowed


async def test_quota_set_zero_means_the_member_may_not_make_images(server: Server) -> None:
    text = reply(await server.admin.slash(server.channel, "quota set", member=server.alice, images=0))

    status = await server.quota(server.alice)
    assert status.limit == 0 and not status.unlimited and not status.allowed
    assert "may not make images" in text


async def test_quota_set_unlimited_frees_one_member(server: Server) -> None:
    text = reply(await server.admin.slash(server.channel, "quota set", member=server.alice, unlimited=True))

    assert await server.services.store.get_quota_override(server.guild.id, server.alice.id) == QuotaLimit(None)
    await server.charge(server.alice, CONFIGURED_DEFAULT + 1)
    status = await server.quota(server.alice)
    assert status.unlimited and status.allowed
    assert "unlimited" in text


@pytest.mark.parametrize("options", [{}, {"images": 3, "unlimited": True}], ids=["neither", "both"])
async def test_quota_set_needs_exactly_one_of_images_or_unlimited(server: Server, options: dict[str, Any]) -> None:
    text = reply(await server.admin.slash(server.channel, "quota set", member=server.alice, **options))

    assert "images:N" in text and "unlimited:True" in text
    assert await server.services.store.get_quota_override(server.guild.id, server.alice.id) is None


async def test_quota_set_beats_an_unlimited_role(server: Server) -> None:
    await server.services.store.add_unlimited_role(server.guild.id, server.patrons.id)

    reply(await server.admin.slash(server.channel, "quota set", member=server.bob, images=1))

    status = await server.quota(server.bob, server.patrons)
    assert (status.limit, status.source) == (1, QuotaSource.OVERRIDE)


async def test_quota_reset_reverts_to_the_default(server: Server) -> None:
    reply(await server.admin.slash(server.channel, "quota set", member=server.alice, images=1))

    text = reply(await server.admin.slash(server.channel, "quota reset", member=server.alice))

    assert await server.services.store.get_quota_override(server.guild.id, server.alice.id) is None
    status = await server.quota(server.alice)
    assert (status.limit, status.source) == (CONFIGURED_DEFAULT, QuotaSource.DEFAULT)
    assert "Removed" in text and "5 images per 24 h" in text


async def test_quota_reset_without_an_override_says_nothing_changed(server: Server) -> None:
    text = reply(await server.admin.slash(server.channel, "quota reset", member=server.alice))

    assert "nothing changed" in text


# --- /quota default ------------------------------------------------------------------------


async def test_quota_default_changes_the_guild_default(server: Server) -> None:
    text = reply(await server.admin.slash(server.channel, "quota default", images=10))

    assert await server.services.store.get_guild_default_quota(server.guild.id) == QuotaLimit(10)
    status = await server.quota(server.alice)
    assert (status.limit, status.source) == (10, QuotaSource.GUILD_DEFAULT)
    assert "10 images per 24 h" in text and "was 5 images per 24 h, the bot's default" in text


async def test_quota_default_zero_means_nobody_not_unlimited(server: Server) -> None:
    # The settings file uses 0 for unlimited; on Discord 0 always means "no images".
    reply(await server.admin.slash(server.channel, "quota default", images=0))

    status = await server.quota(server.alice)
    assert status.limit == 0 and not status.allowed


async def test_quota_default_unlimited_makes_members_unlimited(server: Server) -> None:
    reply(await server.admin.slash(server.channel, "quota default", unlimited=True))

    assert await server.services.store.get_guild_default_quota(server.guild.id) == QuotaLimit(None)
    assert (await server.quota(server.alice)).unlimited


async def test_quota_reset_default_returns_to_the_configured_default(server: Server) -> None:
    reply(await server.admin.slash(server.channel, "quota default", images=10))

    text = reply(await server.admin.slash(server.channel, "quota reset-default"))

    assert await server.services.store.get_guild_default_quota(server.guild.id) is None
    assert (await server.quota(server.alice)).limit == CONFIGURED_DEFAULT
    assert "5 images per 24 h" in text


# --- /quota unlimited ----------------------------------------------------------------------


async def test_unlimited_role_makes_its_members_unlimited(server: Server) -> None:
    text = reply(await server.admin.slash(server.channel, "quota unlimited", role=server.patrons))

    assert await server.services.store.list_unlimited_roles(server.guild.id) == [server.patrons.id]
    bob = await server.quota(server.bob, server.patrons)
    assert bob.unlimited and bob.source == QuotaSource.ROLE
    assert (await server.quota(server.alice)).limit == CONFIGURED_DEFAULT  # no role, no change
    assert f"<@&{server.patrons.id}> is now unlimited" in text


async def test_removing_the_unlimited_role_reverts_its_members(server: Server) -> None:
    reply(await server.admin.slash(server.channel, "quota unlimited", role=server.patrons))

    text = reply(await server.admin.slash(server.channel, "quota unlimited", role=server.patrons, remove=True))

    assert await server.services.store.list_unlimited_roles(server.guild.id) == []
    bob = await server.quota(server.bob, server.patrons)
    assert (bob.limit, bob.source) == (CONFIGURED_DEFAULT, QuotaSource.DEFAULT)
    assert "no longer unlimited" in text


async def test_adding_an_unlimited_role_twice_does_not_toggle_it_off(server: Server) -> None:
    reply(await server.admin.slash(server.channel, "quota unlimited", role=server.patrons))

    text = reply(await server.admin.slash(server.channel, "quota unlimited", role=server.patrons))

    assert "already unlimited" in text
    assert await server.services.store.list_unlimited_roles(server.guild.id) == [server.patrons.id]


# --- /quota show ---------------------------------------------------------------------------


async def test_quota_show_lists_the_default_overrides_and_unlimited_roles(server: Server) -> None:
    store = server.services.store
    await store.set_guild_default_quota(server.guild.id, 10)
    await store.set_quota_override(server.guild.id, server.alice.id, 3)
    await store.set_quota_override(server.guild.id, server.bob.id, None)
    await store.add_unlimited_role(server.guild.id, server.patrons.id)

    text = reply(await server.admin.slash(server.channel, "quota show"))

    assert "Default: 10 images per 24 h, this server's own" in text
    assert f"Unlimited roles: <@&{server.patrons.id}>" in text
    assert "Members with their own quota (2)" in text
    assert f"<@{server.alice.id}>: 3 images per 24 h" in text
    assert f"<@{server.bob.id}>: unlimited" in text


async def test_quota_show_on_a_fresh_server_shows_the_configured_default(server: Server) -> None:
    text = reply(await server.admin.slash(server.channel, "quota show"))

    assert "Default: 5 images per 24 h, the bot's default" in text
    assert "Unlimited roles: none" in text
    assert "Members with their own quota: none" in text


async def test_quota_show_member_gives_limit_source_usage_and_next_slot(server: Server) -> None:
    await server.services.store.set_quota_override(server.guild.id, server.alice.id, 3)
    first, _second = await server.charge(server.alice, 2)

    text = reply(await server.admin.slash(server.channel, "quota show", member=server.alice))

    assert f"<@{server.alice.id}>" in text
    assert "3 images per 24 h" in text and "a personal limit set by an admin" in text
    assert "Used in the last 24 h: 2 · left: 1" in text
    assert f"<t:{math.ceil(first.created_at + WINDOW_SECONDS)}:R>" in text


async def test_quota_show_member_with_an_unlimited_role_says_so(server: Server) -> None:
    await server.services.store.add_unlimited_role(server.guild.id, server.patrons.id)

    text = reply(await server.admin.slash(server.channel, "quota show", member=server.bob))

    assert "unlimited" in text and "from an unlimited role" in text
