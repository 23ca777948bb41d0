"""The discord.py `Bot` subclass: intents, services, cog loading, command sync, the ready line."""

from __future__ import annotations

import functools
import logging

import discord
from discord.ext import commands

from bot.config import Settings
from bot.interactions import ImagineTree
from bot.job_messages import JobMessages
from bot.runner import JobRunner
from bot.services import Engine, Services
from bot.views import failure_view, progress_view, result_view

log = logging.getLogger(__name__)

#: Extensions loaded by `setup_hook`, in order. Each is a module with `async def setup(bot)`.
COGS: tuple[str, ...] = ("cogs.info", "cogs.admin", "cogs.generate", "cogs.settings", "cogs.jobs")

#: Everything the bot needs in a channel, and nothing more. The invite URL asks for exactly
#: these; README documents them. Why each:
#:   view_channel          see the channel at all
#:   send_messages         post progress and result messages (edited later with the bot token,
#:                         because interaction tokens expire after 15 minutes)
#:   embed_links           progress/result/help embeds
#:   attach_files          the PNG results and preview thumbnails
#:   read_message_history  find "the latest image in the channel" for `/edit` and fetch
#:                         the messages the bot edits after a restart
#:   use_application_commands  slash commands and context menus
BOT_PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    embed_links=True,
    attach_files=True,
    read_message_history=True,
    use_application_commands=True,
)

#: OAuth2 scopes of the invite link: the bot user plus its slash commands.
INVITE_SCOPES: tuple[str, ...] = ("bot", "applications.commands")


def bot_intents() -> discord.Intents:
    """The gateway intents: none of them privileged, so no switch in the developer portal.

    Why no `message_content` (privileged): everything the bot reads arrives without it.
    Slash-command options (the prompt, an attached image) and the target message of a
    message context menu come inside the interaction, which is exempt. Messages the bot
    itself sent (its results) always carry their attachments, so `/edit prompt` can find
    "the latest image" through `channel.history` among the bot's own results. What the bot
    cannot see without it is the attachments of *other users'* ordinary messages in
    history; for those, users attach the image to `/edit` or use the "Edit image" context
    menu. That trade keeps the bot installable anywhere (privileged intents need a portal
    switch, and verification beyond 100 servers) at the cost of one documented limitation.

    `guilds` keeps the guild/channel cache that interactions and permission checks use;
    `guild_messages` lets the message cache follow the bot's own result messages.
    """
    intents = discord.Intents.none()
    intents.guilds = True
    intents.guild_messages = True
    return intents


def invite_url(application_id: int) -> str:
    """The link that adds the bot to a server with `BOT_PERMISSIONS` and slash commands."""
    return discord.utils.oauth_url(application_id, permissions=BOT_PERMISSIONS, scopes=INVITE_SCOPES)


class ImagineBot(commands.Bot):
    """The bot. It holds the settings so that cogs read configuration from one place
    (`self.bot.settings`) rather than from the environment."""

    def __init__(
        self,
        settings: Settings,
        *,
        cogs: tuple[str, ...] = COGS,
        engine: Engine | None = None,
        warm_engine: bool = False,
    ) -> None:
        # The bot never joins voice: silence discord.py's start-up warnings about the
        # missing voice libraries, which would otherwise look like a problem to operators.
        discord.VoiceClient.warn_nacl = False
        discord.VoiceClient.warn_dave = False
        super().__init__(
            # Slash commands only. A prefix is required by commands.Bot; a mention prefix
            # never collides with other bots and needs no message_content intent.
            command_prefix=commands.when_mentioned,
            help_command=None,
            intents=bot_intents(),
            tree_cls=ImagineTree,
            # Nobody gets pinged by a prompt echoed back in a result message.
            allowed_mentions=discord.AllowedMentions.none(),
            # No message cache: the bot never reads it (it edits by id and reads history
            # from the API), and discord.py's default keeps the last 1,000 messages seen,
            # with their embeds: several MiB that only grow for the first thousand jobs
            # (the soak, bench/soak.py, found them the largest growth in the bot's heap).
            max_messages=None,
        )
        self.settings = settings
        self.cog_names = cogs
        #: The engine to use instead of spawning the worker (tests pass a fake one).
        self._engine_override = engine
        #: Start the engine (load the models) at boot rather than when the first job
        #: arrives: the first user does not wait for the model load, and a model problem
        #: shows in the log at once. `vqgan-clip-bot` sets it; tests leave the engine lazy.
        self._warm_engine = warm_engine
        #: Store, queue, quotas, engine client and job messages; opened in `setup_hook`.
        self._services: Services | None = None
        #: Feeds the engine from the queue; made in `setup_hook`.
        self._runner: JobRunner | None = None
        self.synced_commands: list[discord.app_commands.AppCommand] = []

    async def setup_hook(self) -> None:
        """Open the services, restore the queue, load the cogs, sync the slash commands,
        then start the job runner.

        Runs once, after login and before the gateway connects. With DEV_GUILD_ID the
        global commands are copied to that one server and synced there, which Discord
        applies instantly (global sync can take up to an hour to show up); the global
        list is left untouched then, so a test server does not wipe production commands.
        """
        messages = JobMessages(self, progress_view=progress_view, result_view=result_view,
                               failure_view=functools.partial(failure_view, self.settings))
        self._services = await Services.open(self.settings, messages=messages,
                                             engine=self._engine_override)
        self._runner = JobRunner(self, self._services)
        # Before any command can arrive, so restored jobs keep their place in line.
        await self._runner.restore()
        for name in self.cog_names:
            await self.load_extension(name)
            log.debug("loaded extension %s", name)
        where = await self.sync_commands()
        log.info(
            "synced %d slash command(s) to %s: %s",
            len(self.synced_commands), where,
            ", ".join(f"/{c.name}" for c in self.synced_commands) or "none",
        )
        self._runner.start(warm_engine=self._warm_engine)

    async def sync_commands(self) -> str:
        """Register the slash commands with Discord; returns where, for the log."""
        guild_id = self.settings.dev_guild_id
        if guild_id is not None:
            guild = discord.Object(id=guild_id)
            self.tree.copy_global_to(guild=guild)
            self.synced_commands = await self.tree.sync(guild=guild)
            return f"server {guild_id} (DEV_GUILD_ID)"
        self.synced_commands = await self.tree.sync()
        return "all servers (global; new commands can take up to an hour to appear)"

    async def close(self) -> None:
        """Stop taking jobs, log out, then stop the engine and close the database.

        The runner stops first so no job starts on an engine that is going away; a job
        in progress stays `running` in the store and resumes at the next start.
        """
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.stop()
        try:
            await super().close()
        finally:
            services, self._services = self._services, None
            if services is not None:
                await services.close()

    @property
    def services(self) -> Services:
        """Store, queue, quotas, engine client and job messages, for the cogs.

        `setup_hook` opens them before it loads any cog, so every command finds them; only
        code that runs outside the bot's life (before login, after close) can see none,
        and that is a programming error.
        """
        if self._services is None:
            raise RuntimeError("the bot's services are not open (before setup_hook or after close)")
        return self._services

    async def on_ready(self) -> None:
        """Log the one line an operator waits for: who the bot is and how to invite it."""
        user = self.user
        application_id = self.application_id or (user.id if user else None)
        url = invite_url(application_id) if application_id else "(unknown application id)"
        log.info(
            "ready: logged in as %s (id %s) in %d server(s); invite it with %s",
            user, user.id if user else "?", len(self.guilds), url,
        )
