"""The sandbox (`vqgan-clip-bot --sandbox`, `bot/sandbox.py`): the bot in a simulated Discord
served as a page on 127.0.0.1.

Most tests run the sandbox in this process on the fake engine and read its page through the
page's own HTTP API (`tests/bot/preview_client.py`), as the page's JavaScript does: what the
API returns is what a person at the page sees. The last ones run `vqgan-clip-bot --sandbox`
as a person does, on the tiny models.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import io
import os
import re
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from bot.__main__ import main
from bot.sandbox import (CLOCK_TICK, MIN_PROGRESS_INTERVAL, TINY_MODEL_FILES, Sandbox, SandboxPlan,
                         engine_environment, plan_sandbox, sandbox_settings)
from tests.bot.conftest import clean_environ, make_settings, raise_unexpected_errors
from tests.bot.fake_engine import FakeEngine, fast_settings, png_file
from tests.bot.preview_client import PreviewPage, button_labels, embed_text

#: Seconds `vqgan-clip-bot --sandbox` may take to print its address (it starts an engine).
START_TIMEOUT = 120
#: The Chromium the browser test drives: $CHROMIUM, else Debian's (`apt-get install chromium`).
#: Playwright's own browser downloads are not used.
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
NO_BROWSER = (
    "needs Playwright (pip install playwright) and Chromium (apt-get install chromium)"
    if CHROMIUM is None or importlib.util.find_spec("playwright") is None else None
)


def fake_plan(data_dir: Path, *, tiny_models: bool = False) -> SandboxPlan:
    return SandboxPlan(sandbox_settings(fast_settings(), data_dir, tiny_models_dir=None),
                       tiny_models, "vqgan_imagenet_f16_16384 + ViT-B/32")


@contextlib.asynccontextmanager
async def sandbox_page(data_dir: Path, engine: FakeEngine | None = None, *, tiny_models: bool = False,
                       viewer: str | None = None) -> AsyncIterator[tuple[Sandbox, PreviewPage]]:
    """A sandbox on the fake engine and one page of it (as `viewer`, default "you");
    afterwards, any error the bot raised that is not one it answers fails the test."""
    async with Sandbox(fake_plan(data_dir, tiny_models=tiny_models), engine or FakeEngine()) as sandbox:
        async with aiohttp.ClientSession() as http:
            viewer_id = None if viewer is None else str(sandbox.members[viewer].id)
            yield sandbox, await PreviewPage.open(http, sandbox.url, viewer_id)
        assert sandbox.env is not None
        raise_unexpected_errors(sandbox.env)


def is_result(message: dict[str, Any]) -> bool:
    return button_labels(message) == ["Reroll", "Vary", "Edit", "Info", "Timelapse"]


# --- what a person does at the page ------------------------------------------------------------


async def test_imagine_from_the_page_shows_the_result_with_reroll_and_edit(tmp_path: Path) -> None:
    async with sandbox_page(tmp_path) as (_, page):
        receipt = await page.command("imagine", prompt="a red apple")
        assert (receipt["rejected"], receipt["settlement"]) == (False, "settled"), receipt
        result = await page.wait_for_message(is_result)
        assert "a red apple" in embed_text(result)
        (attachment,) = result["attachments"]
        image = Image.open(io.BytesIO(await page.asset(attachment["asset_id"])))
        assert (image.format, image.size) == ("PNG", (64, 64))


async def test_edit_with_a_png_uploaded_from_the_page_edits_that_image(tmp_path: Path) -> None:
    engine = FakeEngine()
    async with sandbox_page(tmp_path, engine) as (_, page):
        name, png = png_file("photo.png", 48, 32)
        receipt = await page.command("edit", prompt="withered flowers", image=(name, png))
        assert (receipt["rejected"], receipt["settlement"]) == (False, "settled"), receipt
        await page.wait_for_message(is_result)
    (submit,) = engine.submits
    assert submit.init_image == png


async def test_a_refusal_is_shown_as_the_bots_answer_not_as_a_failed_action(tmp_path: Path) -> None:
    """The bot refuses through its one error handler, where SimCord sees an exception; the
    page would call the action failed ("outcome uncertain") and keep the draft."""
    async with sandbox_page(tmp_path) as (_, page):
        receipt = await page.command("imagine", prompt="castle:0")
        assert (receipt["settlement"], receipt["diagnostics"]) == ("settled", []), receipt
        answer = await page.wait_for_message(lambda m: "can't be used" in m["content"])
    assert answer["ephemeral"]


async def test_what_the_bot_writes_after_an_action_reaches_the_page_unasked(tmp_path: Path) -> None:
    """The result arrives while nobody acts on the page: only the sandbox's refresh on the
    bot's write can show it (SimCord publishes after actions only)."""
    engine = FakeEngine(blocked=True)
    async with sandbox_page(tmp_path, engine) as (_, page):
        await page.command("imagine", prompt="a red apple")
        assert not [m for m in (await page.state())["messages"].values() if is_result(m)]
        engine.release()
        await page.wait_for_message(is_result, timeout=5)


async def test_the_page_is_not_republished_while_the_bot_writes_nothing(tmp_path: Path) -> None:
    """Each republish makes the page's next click stale if it was read before it: so no
    blind refresh timer, only refreshes when the bot wrote."""
    async with sandbox_page(tmp_path) as (_, page):
        before = (await page.state())["publishedRevision"]
        await asyncio.sleep(1.5)  # three of the sandbox's clock ticks
        assert (await page.state())["publishedRevision"] == before


async def test_a_page_action_waits_its_turn_instead_of_failing(tmp_path: Path) -> None:
    """SimCord runs one operation at a time; the sandbox's clock moves, refreshes and
    Python drivers hold `turn()` for theirs, and the page's actions wait for it."""
    async with sandbox_page(tmp_path) as (sandbox, page):
        async with sandbox.turn():
            action = asyncio.create_task(page.command("usage"))
            await asyncio.sleep(0.5)
            assert not action.done()
        receipt = await action
    assert (receipt["rejected"], receipt["settlement"], receipt["diagnostics"]) == (False, "settled", [])


async def test_the_simulated_clock_follows_the_wall_clock(tmp_path: Path) -> None:
    """The progress throttle reads the bot's `time.monotonic`, which SimCord makes virtual:
    without the sandbox moving it, no progress edit would ever pass."""
    loop = asyncio.get_running_loop()
    async with sandbox_page(tmp_path) as (sandbox, _):
        assert sandbox.env is not None
        before, started = sandbox.env.now(), loop.time()
        await asyncio.sleep(1.5)
        moved = (sandbox.env.now() - before).total_seconds()
        passed = loop.time() - started
    # The clock moves every CLOCK_TICK: it may lag the wall clock by about that much.
    assert abs(moved - passed) <= 2 * CLOCK_TICK


async def test_the_simulated_clock_shows_todays_date(tmp_path: Path) -> None:
    async with sandbox_page(tmp_path) as (sandbox, _):
        assert sandbox.env is not None
        assert abs((sandbox.env.now() - datetime.now(UTC)).total_seconds()) < 5


async def test_the_page_lets_a_person_be_you_friend_or_mod(tmp_path: Path) -> None:
    async with sandbox_page(tmp_path) as (_, page):
        viewers = (await page.state())["viewers"]
    assert [viewer["name"] for viewer in viewers] == ["you", "friend", "mod"]


@pytest.mark.parametrize(("viewer", "admin"), [("you", False), ("friend", False), ("mod", True)])
async def test_only_mod_has_the_admin_commands(tmp_path: Path, viewer: str, admin: bool) -> None:
    async with sandbox_page(tmp_path, viewer=viewer) as (_, page):
        names = {entry["invocation"].split()[0] for entry in await page.commands()}
    assert {"imagine", "edit", "queue", "usage"} <= names
    assert ({"quota", "status"} <= names) is admin


async def test_mod_may_cancel_another_members_job(tmp_path: Path) -> None:
    engine = FakeEngine(blocked=True)
    async with sandbox_page(tmp_path, engine) as (sandbox, page):
        await page.command("imagine", prompt="a red apple")
        async with aiohttp.ClientSession() as http:
            mod = await PreviewPage.open(http, sandbox.url, str(sandbox.members["mod"].id))
            running = await mod.wait_for_message(lambda m: button_labels(m) == ["Cancel"])
            receipt = await mod.click(running, "Cancel")
            assert not receipt["rejected"], receipt
            await mod.wait_for_message(lambda m: "Cancelled" in embed_text(m))


@pytest.mark.parametrize("tiny_models", [True, False], ids=["tiny-models", "real-models"])
async def test_the_topic_says_the_images_are_noise_only_with_the_tiny_models(
        tmp_path: Path, tiny_models: bool) -> None:
    async with sandbox_page(tmp_path, tiny_models=tiny_models) as (_, page):
        topic = (await page.state())["channel"]["topic"]
    assert ("noise" in topic) is tiny_models


async def test_the_welcome_says_the_context_menu_is_missing_and_what_replaces_it(tmp_path: Path) -> None:
    async with sandbox_page(tmp_path) as (_, page):
        (welcome,) = (await page.state())["messages"].values()
    text = embed_text(welcome)
    assert "context menu" in text and "Edit image" in text
    assert "**Edit** button and `/edit`" in text


async def test_the_page_is_on_loopback_and_refuses_requests_without_its_token(tmp_path: Path) -> None:
    async with sandbox_page(tmp_path) as (sandbox, page):
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/#[\w-]{32,}", sandbox.url)
        async with aiohttp.ClientSession() as http:
            async with http.post(page.base + "/api/pages", json={}) as answer:
                assert answer.status == 401


async def test_ending_the_session_on_the_page_ends_the_sandbox_cleanly(tmp_path: Path) -> None:
    """"End preview session" (the page's More menu) is a way to stop: `vqgan-clip-bot
    --sandbox` waits for it as for Ctrl-C. The bot may still write afterwards."""
    engine = FakeEngine(blocked=True)
    async with sandbox_page(tmp_path, engine) as (sandbox, page):
        await page.command("imagine", prompt="a red apple")
        await page.act("close")
        await asyncio.wait_for(sandbox.wait_closed(), 5)
        engine.release()
        await asyncio.sleep(2 * CLOCK_TICK)


async def test_members_keep_their_ids_from_one_start_to_the_next(tmp_path: Path) -> None:
    """With `--sandbox-data` the database outlives the sandbox: its quotas and jobs belong
    to member ids, which must be the same the next time."""
    ids = []
    for _ in range(2):
        async with Sandbox(fake_plan(tmp_path), FakeEngine()) as sandbox:
            ids.append({name: member.id for name, member in sandbox.members.items()})
    assert ids[0] == ids[1]


async def test_leaving_the_sandbox_closes_the_engine(tmp_path: Path) -> None:
    engine = FakeEngine()
    async with Sandbox(fake_plan(tmp_path), engine):
        assert not engine.closed
    assert engine.closed


@pytest.mark.skipif(NO_BROWSER is not None, reason=NO_BROWSER or "")
async def test_clicking_reroll_in_a_browser_shows_the_new_result(tmp_path: Path) -> None:
    """The page as a person uses it: JavaScript, polling, a real click."""
    from playwright.async_api import async_playwright, expect

    async with sandbox_page(tmp_path) as (sandbox, api):
        await api.command("imagine", prompt="a red apple")
        await api.wait_for_message(is_result)
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM)
            try:
                page = await browser.new_page()
                await page.goto(sandbox.url)
                rerolls = page.get_by_role("button", name="Reroll")
                await expect(rerolls).to_have_count(1)
                await rerolls.click()
                await expect(page.get_by_text("Rerolled", exact=True)).to_be_visible(timeout=10_000)
                await expect(rerolls).to_have_count(2)
            finally:
                await browser.close()


# --- settings and models ------------------------------------------------------------------------


@pytest.mark.parametrize(("configured", "used"), [(1.0, MIN_PROGRESS_INTERVAL), (5.0, 5.0)])
def test_the_progress_interval_is_at_least_3_seconds(tmp_path: Path, configured: float, used: float) -> None:
    """The page loses preview images when a message is edited about once a second."""
    settings = sandbox_settings(make_settings(progress_interval=configured), tmp_path, tiny_models_dir=None)
    assert MIN_PROGRESS_INTERVAL == 3.0
    assert settings.progress_interval == used


def test_the_database_and_images_live_in_the_data_folder(tmp_path: Path) -> None:
    settings = sandbox_settings(make_settings(), tmp_path, tiny_models_dir=None)
    assert (settings.database_path, settings.results_dir) == (tmp_path / "bot.sqlite3", tmp_path / "results")


async def test_the_configured_models_are_used_when_their_files_are_present(
        tmp_path: Path, tiny_models: Any) -> None:
    settings = make_settings(model_dir=tiny_models.directory, vqgan_model=tiny_models.vqgan_name,
                             clip_model=tiny_models.clip_name)
    plan = await plan_sandbox(settings, tmp_path)
    assert not plan.tiny_models
    assert (plan.settings.model_dir, plan.settings.vqgan_model) == (tiny_models.directory, "tiny_vqgan")


async def test_tiny_models_are_made_when_the_configured_ones_are_missing(tmp_path: Path) -> None:
    plan = await plan_sandbox(make_settings(model_dir=tmp_path / "empty"), tmp_path)
    assert plan.tiny_models
    assert plan.settings.model_dir == tmp_path / "tiny-models"
    assert all((tmp_path / "tiny-models" / name).is_file() for name in TINY_MODEL_FILES)
    assert (plan.settings.vqgan_model, plan.settings.clip_model) == ("tiny_vqgan", "tiny_clip")


@pytest.mark.parametrize("tiny_models", [True, False], ids=["tiny-models", "real-models"])
def test_the_engine_gets_one_cpu_thread_on_the_tiny_models_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_models: bool) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    environment = engine_environment(fake_plan(tmp_path, tiny_models=tiny_models))
    assert (environment.get("OMP_NUM_THREADS") == "1") is tiny_models


def test_a_thread_count_set_by_the_operator_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert engine_environment(fake_plan(tmp_path, tiny_models=True))["OMP_NUM_THREADS"] == "4"


# --- vqgan-clip-bot --sandbox -------------------------------------------------------------------


def test_the_bot_on_discord_never_imports_simcord(empty_dir: Path) -> None:
    """The sandbox's libraries are an optional extra: the bot without --sandbox runs without."""
    code = ("import sys, bot.__main__, bot.app, cogs.generate, cogs.admin, cogs.info\n"
            "print('simcord' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=empty_dir, env=clean_environ(),
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "False"), done.stderr


def test_sandbox_without_its_extra_says_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "markdown_it", None)  # how Python marks a module as absent
    assert main(["--sandbox"]) == 1
    error = capsys.readouterr().err
    assert "markdown_it" in error and "pip install -e '.[sandbox]'" in error and "./run.sh --sandbox" in error


def test_sandbox_data_without_sandbox_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_code:
        main(["--sandbox-data", "somewhere"])
    assert exit_code.value.code == 2
    assert "--sandbox-data goes with --sandbox" in capsys.readouterr().err


def test_the_sandbox_needs_no_token(empty_dir: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "bot", "--sandbox", "--check-config"],
                          cwd=empty_dir, env=clean_environ(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "configuration OK" in done.stdout


def test_the_sandbox_prints_its_address_once_and_stops_on_ctrl_c_with_its_engine(
        empty_dir: Path, tiny_models: Any) -> None:
    environ = clean_environ(MODEL_DIR=str(tiny_models.directory), VQGAN_MODEL="tiny_vqgan",
                            CLIP_MODEL="tiny_clip", DEVICE="cpu", OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-m", "bot", "--sandbox"], cwd=empty_dir, env=environ,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT)
        assert ready, "no address printed"
        line = process.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/#[\w-]{32,}", line)
        assert url, line
        page = asyncio.run(_fetch(url.group(0).split("#")[0]))
        assert "<html" in page.lower()
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert stdout == "", "more than one line printed"
    assert "Traceback" not in stderr
    (engine_pid,) = re.findall(r"engine ready: pid (\d+)", stderr)
    with pytest.raises(ProcessLookupError):
        os.kill(int(engine_pid), 0)
    (scratch,) = re.findall(r"database and images in (\S+) \(throwaway", stderr)
    assert not Path(scratch).exists(), "the throwaway folder is left"
    assert list(empty_dir.iterdir()) == []


async def _fetch(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(url) as answer:
        assert answer.status == 200
        return await answer.text()
