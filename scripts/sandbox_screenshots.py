"""Take the README's screenshots of the sandbox (`vqgan-clip-bot --sandbox`) with headless
Chromium, as a person would see the page: a job in progress, its result with the buttons,
and the Edit button's form.

    .venv/bin/pip install -e '.[sandbox,browser]'     # Playwright; apt-get install chromium
    .venv/bin/python scripts/sandbox_screenshots.py   # writes docs/sandbox-*.png

It runs the sandbox in this process on the models the settings name when they are present,
else on the tiny random models (images of noise, as the page says), types the commands into
the page and clicks its buttons. Nothing else is started, nothing leaves the machine. Look
at the pictures before committing them.
Playwright drives a system Chromium (`--chromium`, default: `chromium` on the PATH); it does
not download one.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.config import load_settings  # noqa: E402
from bot.engine_client import EngineClient, worker_command_for  # noqa: E402
from bot.sandbox import ExternallyWaited, Sandbox, engine_environment, plan_sandbox  # noqa: E402

#: The browser window: wide enough for the page's sidebar and a result side by side.
VIEWPORT = {"width": 1200, "height": 800}
PROMPT = "a lighthouse on a cliff at sunset + oil painting"
#: Seconds a tiny job may take on a slow CPU.
JOB_TIMEOUT = 300


def save(png: bytes, path: Path) -> None:
    """Write a screenshot as a 256-colour PNG: the page's flat colours survive, and the file
    is a third of the size."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        path, optimize=True)
    print(path, f"{path.stat().st_size // 1024} KiB")


async def take(page: Any, out: Path) -> None:
    """Drive the page and write the screenshots into `out`."""
    from playwright.async_api import expect

    await expect(page.get_by_text("VQGAN-CLIP sandbox", exact=True)).to_be_visible()
    composer = page.get_by_placeholder("Message #imagine")
    await composer.click()
    await composer.type("/imagine")
    await page.keyboard.press("Enter")
    await page.keyboard.type(PROMPT)
    await page.keyboard.press("Enter")

    # Progress: the job's message with a preview image and the Cancel button, in full.
    progress = page.locator("[data-message-id]", has_text=re.compile(r"iteration \d+/\d+")).last
    await expect(progress.locator("img").first).to_be_visible(timeout=JOB_TIMEOUT * 1000)
    await page.wait_for_timeout(500)  # let the preview image decode
    await progress.evaluate("element => element.scrollIntoView({block: 'end'})")
    save(await page.screenshot(), out / "sandbox-progress.png")

    # The result with its buttons, alone: the picture next to the README's command table.
    result = page.locator("[data-message-id]", has_text="your image is ready").last
    await expect(result.get_by_role("button", name="Reroll")).to_be_visible(timeout=JOB_TIMEOUT * 1000)
    await page.wait_for_timeout(500)
    await result.evaluate("element => element.scrollIntoView({block: 'end'})")
    message = await result.bounding_box()
    embed = await result.locator("article").first.bounding_box()
    last_button = await result.get_by_role("button", name="Timelapse").bounding_box()  # the row may be wider
    assert message is not None and embed is not None and last_button is not None
    right = max(embed["x"] + embed["width"], last_button["x"] + last_button["width"])
    clip = {"x": message["x"], "y": message["y"], "height": message["height"],
            "width": right + 16 - message["x"]}
    save(await page.screenshot(clip=clip), out / "sandbox-result.png")  # type: ignore[arg-type]

    # The Edit button's form.
    await result.get_by_role("button", name="Edit").click()
    prompt = page.get_by_role("dialog").get_by_role("textbox").first
    await expect(prompt).to_be_visible()
    await prompt.fill("the same lighthouse in winter")
    save(await page.screenshot(), out / "sandbox-edit.png")


async def main(out: Path, chromium: str) -> int:
    from playwright.async_api import async_playwright

    settings = load_settings(ROOT / ".env", token_required=False)
    with tempfile.TemporaryDirectory(prefix="vqgan-clip-screenshots-") as scratch:
        plan = await plan_sandbox(settings, Path(scratch))
        client = EngineClient(worker_command_for(plan.settings), env=engine_environment(plan))
        await client.start()
        try:
            async with Sandbox(plan, ExternallyWaited(client)) as sandbox, async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=chromium)
                try:
                    page = await browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
                    await page.goto(sandbox.url)
                    await take(page, out)
                finally:
                    await browser.close()
        finally:
            await client.close()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="folder for the PNGs (default docs/)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"),
                        help="the Chromium executable (default: chromium on the PATH)")
    args = parser.parse_args()
    if not args.chromium:
        parser.error("no Chromium found: install it (Debian: apt-get install chromium) or pass --chromium")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(main(args.out, args.chromium)))
