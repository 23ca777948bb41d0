"""Fixtures for bot tests: settings that need no .env, the bot SimCord drives, a store on
a hand-moved clock.

SimCord's pytest plugin gives `simcord_env` (a running virtual Discord with our bot
logged in, commands synced) once `simcord_bot` returns the bot to attach. Tests that need
other settings build `ImagineBot(make_settings(...))` and use `simcord.run(bot)` directly.
"""

from __future__ import annotations

import os
from dataclasses import replace
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import simcord

from bot.app import ImagineBot
from bot.config import SETTING_NAMES, Settings
from bot.errors import UserError
from bot.interactions import unwrap
from bot.store import Store

#: A token-shaped fake. SimCord never sends it anywhere; tests check it never leaks.
FAKE_TOKEN = "MTAxMjM0NTY3ODkwMTIzNDU2.GaBcDe.fake-token-for-tests-only_0123456789abcdef"


def make_settings(**overrides: object) -> Settings:
    """Settings with the documented defaults, a fake token and no model downloads."""
    return replace(Settings(discord_token=FAKE_TOKEN, auto_download=False), **overrides)


def clean_environ(**extra: str) -> dict[str, str]:
    """The current environment without any of the bot's settings (a developer's shell may
    export DISCORD_TOKEN), plus `extra`: what a subprocess test should run with."""
    env = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}
    env.update(extra)
    return env


@pytest.fixture(autouse=True)
def _run_in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every bot test runs in its own empty directory, so the default relative paths
    (./data/bot.sqlite3, ./data/results, ./models) never touch the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def bot_settings() -> Settings:
    return make_settings()


@pytest_asyncio.fixture
async def simcord_bot(bot_settings: Settings) -> AsyncIterator[ImagineBot]:
    """The bot SimCord drives. SimCord's shutdown does not call `bot.close()`, so close it
    here: that closes the store and engine, whose threads would otherwise outlive the
    test's event loop and warn in a later test."""
    bot = ImagineBot(bot_settings)
    yield bot
    if not bot.is_closed():
        await bot.close()


@pytest.fixture
def empty_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory (no .env), made current for the test."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    return workdir


@pytest_asyncio.fixture
async def env(simcord_env: simcord.Env) -> AsyncIterator[simcord.Env]:
    """SimCord's environment, and afterwards the bot closed: `env.shutdown()` detaches the
    bot without calling `bot.close()`, which would leave the SQLite store open (and its
    worker thread complaining about a closed event loop in a later test)."""
    yield simcord_env
    await simcord_env.bot.close()
    raise_unexpected_errors(simcord_env)


def raise_unexpected_errors(env: simcord.Env, since: int = 0) -> None:
    """Fail the test with every error the bot raised except the `UserError`s it answered.

    SimCord records every exception that reaches the command tree's error handler as a bot
    failure. This bot sends its refusals (bad prompt, quota, not an admin) down that very
    path on purpose, to its one handler, which answers them; those are acknowledged here.
    Anything else, a bug, still fails the test that triggered it, unless the test checked
    it itself (`since`: SimCord's error cursor after the errors the test looked at).
    """
    errors = env.errors_since(since)
    env.errors  # acknowledged: SimCord's own teardown must not raise them again
    unexpected = [error for error in errors if not isinstance(unwrap(error), UserError)]
    if unexpected:
        raise ExceptionGroup(f"bot raised {len(unexpected)} unexpected error(s)", unexpected)


def reply(result: simcord.InteractionResult) -> str:
    """The ephemeral answer's text; fails if the answer was public or missing."""
    assert result.response is not None, "the command did not answer"
    assert result.response.ephemeral, "the answer was posted publicly"
    return result.response.content


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest_asyncio.fixture
async def store(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Store]:
    """A fresh store in a directory it has to create, on `clock`."""
    s = await Store.open(tmp_path / "data" / "bot.sqlite3", clock=clock)
    yield s
    await s.close()
