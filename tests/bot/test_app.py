"""The bot as Discord sees it (through SimCord), and the `python -m bot` entry point."""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import discord
import pytest
import simcord

from bot.__main__ import RedactingFormatter, models_to_download
from bot.engine_client import EngineClient
from bot.redis_backend import RedisBackend
from bot.services import build_engine
from engine.protocol import PROTOCOL_VERSION
from engine.redis_layout import Expectation
from engine.redis_url import parse_redis_url
from bot.app import BOT_PERMISSIONS, COGS, ImagineBot, bot_intents, invite_url
from bot.job_messages import JobMessages
from bot.render import HELP_TITLE
from bot.services import Services
from bot.views import progress_view, result_view
from tests.bot.conftest import FAKE_TOKEN, clean_environ, make_settings

DEV_GUILD_ID = 123456789012345678
SUBPROCESS_TIMEOUT = 60


def command_puts(env: simcord.Env) -> list[str]:
    """Paths of the command-sync requests the bot made."""
    return [r.path for r in env.http_requests if r.method == "PUT" and r.path.endswith("/commands")]


def member_and_channel(env: simcord.Env, guild: simcord.GuildHandle | None = None, name: str = "alice"):
    guild = guild or env.create_guild()
    channel = guild.create_text_channel("general")
    member = guild.add_member(env.create_user(name))
    return member, channel


def help_text(result: simcord.InteractionResult) -> str:
    (embed,) = result.response.embeds
    return "\n".join([embed.title or "", embed.description or ""] + [f"{f.name}\n{f.value}" for f in embed.fields])


# --- start-up ------------------------------------------------------------------------------


async def test_cogs_listed_in_COGS_are_loaded(simcord_env: simcord.Env) -> None:
    assert "cogs.info" in COGS
    assert set(simcord_env.bot.extensions) == set(COGS)
    assert simcord_env.bot.get_cog("Info") is not None


async def test_without_dev_guild_commands_sync_globally(simcord_env: simcord.Env) -> None:
    assert command_puts(simcord_env) == [f"/applications/{simcord_env.bot.application_id}/commands"]
    member, channel = member_and_channel(simcord_env)
    assert "help" in member.available_commands(channel)


async def test_with_dev_guild_commands_sync_to_that_guild_only() -> None:
    bot = ImagineBot(make_settings(dev_guild_id=DEV_GUILD_ID))
    env = simcord.Env(bot)
    dev_guild = env.create_guild("dev", id=DEV_GUILD_ID)
    other_guild = env.create_guild("other")
    await env.start()
    try:
        assert command_puts(env) == [f"/applications/{bot.application_id}/guilds/{DEV_GUILD_ID}/commands"]
        member, channel = member_and_channel(env, dev_guild)
        stranger, elsewhere = member_and_channel(env, other_guild, "bob")
        assert "help" in member.available_commands(channel)
        assert "help" not in stranger.available_commands(elsewhere)
    finally:
        await env.shutdown()


async def test_ready_line_names_the_bot_and_gives_the_invite_url(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bot")
    bot = ImagineBot(make_settings())
    async with simcord.run(bot):
        pass
    (ready,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ready:")]
    assert str(bot.user) in ready
    assert invite_url(bot.application_id) in ready


def test_invite_url_asks_for_bot_and_commands_scopes_and_the_bot_permissions() -> None:
    query = parse_qs(urlparse(invite_url(42)).query)
    assert query["client_id"] == ["42"]
    assert query["scope"] == ["bot applications.commands"]
    granted = discord.Permissions(int(query["permissions"][0]))
    assert granted == BOT_PERMISSIONS
    for name in ("view_channel", "send_messages", "embed_links", "attach_files",
                 "read_message_history", "use_application_commands"):
        assert getattr(granted, name), name
    assert not granted.administrator and not granted.manage_messages


def test_intents_are_not_privileged() -> None:
    intents = bot_intents()
    assert not (intents.message_content or intents.members or intents.presences)


@pytest.mark.simcord(approved_intents=discord.Intents.none())
async def test_bot_starts_where_no_privileged_intent_is_approved(simcord_env: simcord.Env) -> None:
    # With approved_intents, SimCord refuses a bot that asks for an unapproved privileged intent.
    assert simcord_env.bot.is_ready()


async def test_bot_closes_cleanly(simcord_env: simcord.Env) -> None:
    await simcord_env.bot.close()
    assert simcord_env.bot.is_closed()
    assert simcord_env.errors == []


# --- /help ---------------------------------------------------------------------------------


async def test_help_answers_ephemerally_with_an_embed(simcord_env: simcord.Env) -> None:
    member, channel = member_and_channel(simcord_env)
    result = await member.slash(channel, "help")
    assert result.ephemeral
    assert result.response is not None and result.response.ephemeral
    assert [e.title for e in result.response.embeds] == [HELP_TITLE]
    assert channel.last_message is None  # nothing public was posted


async def test_help_explains_the_prompt_grammar_with_examples(simcord_env: simcord.Env) -> None:
    member, channel = member_and_channel(simcord_env)
    text = help_text(await member.slash(channel, "help"))
    assert "a watercolor painting + a baseball game" in text
    assert ":2" in text  # weighting a part
    assert ":-1" in text  # steering away
    assert "|" in text
    assert "/edit withered flowers" in text


def test_log_formatter_hides_the_token_even_in_tracebacks() -> None:
    formatter = RedactingFormatter("%(message)s", FAKE_TOKEN)
    try:
        raise RuntimeError(f"library echoed {FAKE_TOKEN}")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "token %s", (FAKE_TOKEN,), sys.exc_info())
    text = formatter.format(record)
    assert FAKE_TOKEN not in text
    assert text.count("<hidden>") == 2


# --- models to download --------------------------------------------------------------------


def test_auto_download_covers_the_configured_vqgan_and_clip_names() -> None:
    assert models_to_download(make_settings()) == ["vqgan_imagenet_f16_16384", "ViT-B/32"]


def test_auto_download_skips_vqgan_given_as_files_and_clip_given_as_path(tmp_path: Path) -> None:
    settings = make_settings(
        vqgan_config=tmp_path / "a.yaml", vqgan_checkpoint=tmp_path / "a.ckpt", clip_model=str(tmp_path / "c.pt"),
    )
    assert models_to_download(settings) == []


def test_auto_download_downloads_nothing_when_the_models_are_on_remote_workers() -> None:
    settings = make_settings(engine_backend="redis", redis_url=parse_redis_url("redis://127.0.0.1:1/0"))
    assert models_to_download(settings) == []


# --- choosing the engine (ENGINE_BACKEND) ----------------------------------------------------


def test_engine_backend_local_builds_the_engine_process_client() -> None:
    assert isinstance(build_engine(make_settings()), EngineClient)


def test_engine_backend_redis_builds_the_redis_backend_expecting_the_bots_models() -> None:
    settings = make_settings(engine_backend="redis", redis_prefix="vqc-test:",
                             redis_url=parse_redis_url("redis://bot:pw-9@127.0.0.1:1/0"))
    engine = build_engine(settings)
    assert isinstance(engine, RedisBackend)
    assert engine.expect == Expectation(PROTOCOL_VERSION, "vqgan_imagenet_f16_16384", "ViT-B/32")
    assert engine.layout.prefix == "vqc-test:" and engine.target == settings.redis_url


def test_engine_backend_redis_expects_no_model_name_for_models_given_as_files(tmp_path: Path) -> None:
    settings = make_settings(engine_backend="redis", redis_url=parse_redis_url("redis://127.0.0.1:1/0"),
                             vqgan_config=tmp_path / "a.yaml", vqgan_checkpoint=tmp_path / "a.ckpt",
                             clip_model=str(tmp_path / "c.pt"))
    engine = build_engine(settings)
    assert isinstance(engine, RedisBackend)
    assert engine.expect == Expectation(PROTOCOL_VERSION, None, None)


# --- the process ---------------------------------------------------------------------------

#: Runs bot.__main__.main with Discord and the model download replaced, so the process
#: paths (exit codes, signals, messages) are tested without a network.
HARNESS = textwrap.dedent(
    """
    import asyncio, sys, types
    import discord
    import bot.app
    from engine.errors import EngineError

    mode = sys.argv[1]

    def ensure_models(names, model_dir, *, progress=True):
        if mode == "download-fails":
            raise EngineError("cannot download ViT-B/32: no network. Place ViT-B-32.pt in models/")
        print("ensure_models", names, model_dir, flush=True)
        return []

    fake = types.ModuleType("engine.download")
    fake.ensure_models = ensure_models
    sys.modules["engine.download"] = fake

    async def start(self, token, *, reconnect=True):
        if mode == "login-fails":
            raise discord.LoginFailure("Improper token has been passed.")
        print("started", flush=True)
        if mode == "run-until-closed":
            while not self.is_closed():
                await asyncio.sleep(0.02)

    bot.app.ImagineBot.start = start
    from bot.__main__ import main
    sys.exit(main(sys.argv[2:]))
    """
)


def run_bot_module(cwd: Path, *args: str, **environ: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args], cwd=cwd, env=clean_environ(**environ),
        capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT,
    )


def run_harness(cwd: Path, mode: str, *args: str, **environ: str) -> subprocess.CompletedProcess[str]:
    script = cwd.parent / "harness.py"
    script.write_text(HARNESS)
    return subprocess.run(
        [sys.executable, str(script), mode, *args], cwd=cwd, env=clean_environ(**environ),
        capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT,
    )


def test_python_m_bot_without_token_exits_2_saying_where_to_put_it(empty_dir: Path) -> None:
    proc = run_bot_module(empty_dir)
    assert proc.returncode == 2
    assert "configuration problems:" in proc.stderr
    assert "DISCORD_TOKEN" in proc.stderr
    assert ".env" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_python_m_bot_with_bad_value_names_the_setting(empty_dir: Path) -> None:
    proc = run_bot_module(empty_dir, DISCORD_TOKEN=FAKE_TOKEN, DEFAULT_ITERATIONS="abc")
    assert proc.returncode == 2
    assert "DEFAULT_ITERATIONS" in proc.stderr
    assert FAKE_TOKEN not in proc.stderr + proc.stdout


def test_check_config_prints_settings_without_the_token_and_exits_0(empty_dir: Path) -> None:
    (empty_dir / ".env").write_text(f"DISCORD_TOKEN={FAKE_TOKEN}\nMAX_CUTN=48\n")
    proc = run_bot_module(empty_dir, "--check-config")
    assert proc.returncode == 0, proc.stderr
    assert "MAX_CUTN=48" in proc.stdout
    assert "configuration OK" in proc.stdout
    assert FAKE_TOKEN not in proc.stdout + proc.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_shuts_the_bot_down_with_exit_code_0(empty_dir: Path, signum: signal.Signals) -> None:
    script = empty_dir.parent / "harness.py"
    script.write_text(HARNESS)
    proc = subprocess.Popen(
        [sys.executable, str(script), "run-until-closed"], cwd=empty_dir,
        env=clean_environ(DISCORD_TOKEN=FAKE_TOKEN, AUTO_DOWNLOAD="false"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], SUBPROCESS_TIMEOUT)
        assert ready and proc.stdout.readline().strip() == "started"
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert "shutting down" in stderr
    assert "Traceback" not in stderr


def test_rejected_token_exits_1_with_advice_and_without_the_token(empty_dir: Path) -> None:
    proc = run_harness(empty_dir, "login-fails", DISCORD_TOKEN=FAKE_TOKEN, AUTO_DOWNLOAD="false")
    assert proc.returncode == 1
    assert "Discord rejected the token" in proc.stderr
    assert "Reset Token" in proc.stderr
    assert FAKE_TOKEN not in proc.stdout + proc.stderr


def test_auto_download_ensures_the_default_models_before_starting(empty_dir: Path) -> None:
    proc = run_harness(empty_dir, "returns", DISCORD_TOKEN=FAKE_TOKEN, MODEL_DIR="./m")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "ensure_models ['vqgan_imagenet_f16_16384', 'ViT-B/32'] m"
    assert lines[1] == "started"


def test_auto_download_false_skips_the_download(empty_dir: Path) -> None:
    proc = run_harness(empty_dir, "returns", DISCORD_TOKEN=FAKE_TOKEN, AUTO_DOWNLOAD="false")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["started"]


def test_failed_download_exits_1_with_the_engine_message(empty_dir: Path) -> None:
    proc = run_harness(empty_dir, "download-fails", DISCORD_TOKEN=FAKE_TOKEN)
    assert proc.returncode == 1
    assert "no network. Place ViT-B-32.pt in models/" in proc.stderr
    assert "started" not in proc.stdout


def test_bot_side_modules_never_import_torch(empty_dir: Path) -> None:
    code = (
        "import sys, bot.config, bot.app, bot.__main__, cogs.info\n"
        "heavy = sorted(m for m in ('torch', 'kornia', 'clip', 'taming') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=empty_dir, env=clean_environ(),
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


async def test_the_engine_process_does_not_inherit_the_discord_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("SOME_OTHER_SETTING", "kept")
    client = discord.Client(intents=discord.Intents.none())
    messages = JobMessages(client, progress_view=progress_view, result_view=result_view)
    services = await Services.open(make_settings(), messages=messages)
    try:
        env = services.engine.env  # type: ignore[attr-defined]  # the real EngineClient
        assert env is not None and "DISCORD_TOKEN" not in env
        assert env["SOME_OTHER_SETTING"] == "kept"
    finally:
        await services.close()
