"""`vqgan-clip-bot` (also `python -m bot`): settings, model download, run, clean shutdown.

`--sandbox` runs the bot in a simulated Discord in the browser instead (`bot.sandbox`,
imported only then: it needs the optional `sandbox` extra, which the bot on Discord does not).

Exit codes: 0 clean shutdown (including SIGTERM/Ctrl-C) or `--check-config` passed;
1 could not start (models could not be downloaded, Discord rejected the token or could
not be reached, a privileged intent is not enabled; the sandbox's extra is not installed
or its engine did not start); 2 the configuration is invalid;
130 Ctrl-C during the model download, or a second Ctrl-C that forced the exit.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from bot.config import ConfigError, Settings, format_settings, load_settings

log = logging.getLogger("bot")

EXIT_OK = 0
EXIT_STARTUP_FAILED = 1
EXIT_BAD_CONFIG = 2
EXIT_INTERRUPTED = 130

#: What `--sandbox` needs beyond the bot: SimCord and its preview page's own libraries
#: (the `sandbox` extra, `simcord[preview]`).
SANDBOX_MODULES = ("simcord", "aiohttp", "markdown_it", "linkify_it")
SANDBOX_INSTALL_HINT = (
    "./run.sh --sandbox installs it; in your own environment: pip install -e '.[sandbox]'"
)


class RedactingFormatter(logging.Formatter):
    """A formatter that replaces a secret in every formatted record, tracebacks included.

    No code here logs the token on purpose; this guards against a library doing so in an
    exception message or a debug line.
    """

    def __init__(self, fmt: str, secret: str) -> None:
        super().__init__(fmt)
        self._secret = secret

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text.replace(self._secret, "<hidden>") if self._secret else text


def configure_logging(level: str, secret: str = "") -> None:
    """Log to stderr at `level`, with the token redacted from everything that is written."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", secret))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # discord.py's gateway chatter at INFO is useful; its HTTP debug lines are not.
    logging.getLogger("discord.http").setLevel(max(logging.getLevelName(level), logging.INFO))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vqgan-clip-bot",
        description="Run the VQGAN-CLIP Discord bot. Settings come from .env and the environment "
        "(see config.example.env).",
    )
    parser.add_argument(
        "--check-config", action="store_true",
        help="validate the settings, print them (token hidden) and exit",
    )
    parser.add_argument(
        "--env-file", type=Path, default=Path(".env"), metavar="PATH",
        help="settings file to read (default: .env in the current directory)",
    )
    parser.add_argument(
        "--sandbox", action="store_true",
        help="run the bot in a simulated Discord in your browser instead: no token, nothing sent "
        "anywhere; prints the page's address (needs the 'sandbox' extra)",
    )
    parser.add_argument(
        "--sandbox-data", type=Path, metavar="DIR",
        help="with --sandbox: keep its database and images in DIR (default: a throwaway folder)",
    )
    return parser


def missing_sandbox_modules() -> list[str]:
    """The modules `--sandbox` needs that are not installed."""
    return [name for name in SANDBOX_MODULES if importlib.util.find_spec(name) is None]


def models_to_download(settings: Settings) -> list[str]:
    """The model names AUTO_DOWNLOAD should make sure of. Files the operator pointed at
    directly (VQGAN_CONFIG/VQGAN_CHECKPOINT, a CLIP .pt path) are theirs, not ours; with
    ENGINE_BACKEND=redis the models live on the workers' machines, so none here."""
    names: list[str] = []
    if settings.engine_backend == "redis":
        return names
    if not settings.uses_custom_vqgan_files:
        names.append(settings.vqgan_model)
    if not settings.clip_model_is_path:
        names.append(settings.clip_model)
    return names


def ensure_default_models(settings: Settings) -> int | None:
    """Download missing default models; None when all is well, else the exit code."""
    names = models_to_download(settings)
    if not names:
        return None
    # Imported here: engine.download is stdlib-only, but only this step needs it.
    from engine.download import ensure_models
    from engine.errors import EngineError

    log.info("checking models in %s: %s", settings.model_dir, ", ".join(names))
    try:
        ensure_models(names, settings.model_dir)
    except EngineError as error:
        print(f"could not get the models: {error}", file=sys.stderr)
        print("(set AUTO_DOWNLOAD=false to start without checking, e.g. when the files are "
              "placed by hand)", file=sys.stderr)
        return EXIT_STARTUP_FAILED
    return None


async def run_bot(settings: Settings) -> int:
    """Run the bot until it is closed; returns the exit code.

    SIGINT and SIGTERM close the bot (disconnect from the gateway, close the HTTP session,
    unload the cogs) and this returns 0; `bot.run()` is not used because its handling
    ends with an exception on SIGTERM. A second signal while shutting down falls back to
    the default handling, so a stuck shutdown can still be interrupted.
    """
    import aiohttp
    import discord

    from bot.app import ImagineBot

    bot = ImagineBot(settings, warm_engine=True)
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    close_tasks: list[asyncio.Task[None]] = []

    def request_shutdown(signum: signal.Signals) -> None:
        log.info("shutting down (%s)", signum.name)
        for sig in handled:
            loop.remove_signal_handler(sig)
        handled.clear()
        close_tasks.append(loop.create_task(bot.close()))

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, request_shutdown, sig)
            handled.append(sig)
        except (NotImplementedError, RuntimeError):  # Windows, or not the main thread
            pass
    try:
        async with bot:
            await bot.start(settings.discord_token)
    except discord.LoginFailure as error:
        print(
            f"Discord rejected the token: {error} Reset it at https://discord.com/developers/"
            "applications -> your app -> Bot -> Reset Token, and put the new one in "
            "DISCORD_TOKEN (.env).",
            file=sys.stderr,
        )
        return EXIT_STARTUP_FAILED
    except (aiohttp.ClientError, OSError) as error:
        # Login failed before any retry logic: no network, DNS, a proxy, Discord down.
        print(f"could not reach Discord ({error.__class__.__name__}: {error}); check the "
              "network connection and https://discordstatus.com, then start again.", file=sys.stderr)
        return EXIT_STARTUP_FAILED
    except discord.PrivilegedIntentsRequired:
        print(
            "Discord refused the connection: the bot asks for a privileged intent that is not "
            "enabled for it. Enable it at https://discord.com/developers/applications -> your "
            "app -> Bot -> Privileged Gateway Intents.",
            file=sys.stderr,
        )
        return EXIT_STARTUP_FAILED
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        if close_tasks:
            await asyncio.gather(*close_tasks, return_exceptions=True)
    log.info("stopped")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """The console script. Returns the process exit code (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.sandbox_data is not None and not args.sandbox:
        parser.error("--sandbox-data goes with --sandbox")
    if args.sandbox and (missing := missing_sandbox_modules()):
        print(f"--sandbox needs the optional 'sandbox' extra, which is not installed (missing: "
              f"{', '.join(missing)}). {SANDBOX_INSTALL_HINT}", file=sys.stderr)
        return EXIT_STARTUP_FAILED
    # Logging before settings at a fixed level, so the loader's warnings are shown.
    configure_logging("INFO")
    try:
        settings = load_settings(args.env_file, token_required=not args.sandbox)
    except ConfigError as error:
        print("configuration problems:", file=sys.stderr)
        for problem in error.problems:
            print(f"  - {problem}", file=sys.stderr)
        print(f"(settings are read from {args.env_file} and the environment; "
              "config.example.env documents each one)", file=sys.stderr)
        return EXIT_BAD_CONFIG
    configure_logging(settings.log_level, secret=settings.discord_token)

    if args.check_config:
        print(format_settings(settings))
        print("configuration OK")
        return EXIT_OK

    if args.sandbox:
        # Never downloads models, never reaches Discord: see bot/sandbox.py.
        from bot.sandbox import run_sandbox

        try:
            return asyncio.run(run_sandbox(settings, args.sandbox_data))
        except KeyboardInterrupt:  # Ctrl-C before the page was up, or a second one
            return EXIT_INTERRUPTED

    if settings.auto_download:
        try:
            failed = ensure_default_models(settings)
        except KeyboardInterrupt:
            print("download interrupted; it resumes where it stopped on the next start",
                  file=sys.stderr)
            return EXIT_INTERRUPTED
        if failed is not None:
            return failed
    try:
        return asyncio.run(run_bot(settings))
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
