"""The pieces behind the generation surface, without Discord: wording, sizes, prompts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bot import render
from bot.jobs import Job
from bot.requests import RequestRejected, fit_size, shape_size, validate_prompt, validate_replace
from tests.bot.conftest import clean_environ, make_settings


def test_progress_bar_fills_with_the_fraction_done() -> None:
    assert render.progress_bar(0, 10, width=10) == "░" * 10 + " 0%"
    assert render.progress_bar(5, 10, width=10) == "█" * 5 + "░" * 5 + " 50%"
    assert render.progress_bar(12, 10, width=10) == "█" * 10 + " 100%"


@pytest.mark.parametrize(("seconds", "text"), [(0, "1 s"), (0.2, "1 s"), (44.1, "45 s"), (61, "2 min"),
                                               (59 * 60, "59 min"), (3600, "1 h"), (3700, "1 h 2 min"),
                                               (3 * 3600 + 11 * 60 + 1, "3 h 12 min")])
def test_format_duration_is_coarse_and_never_promises_early(seconds: float, text: str) -> None:
    assert render.format_duration(seconds) == text


def test_failure_text_says_not_charged_exactly_once() -> None:
    assert render.not_charged("out of memory").endswith("You were not charged for this image.")
    crash = "the engine crashed and was restarted; you were not charged"
    assert render.not_charged(crash).lower().count("not charged") == 1


def test_long_prompts_are_shortened_for_embed_titles() -> None:
    job = Job(id="abc", guild_id=1, channel_id=2, user_id=3, kind="imagine", prompt="x" * 600,
              iterations=10, params={"width": 64, "height": 64})
    assert len(render.progress_embed(job, 1, 10, None, None).title) <= 256


def test_default_size_is_used_when_no_shape_is_chosen() -> None:
    assert shape_size(make_settings(default_size=(384, 256)), None) == (384, 256)


@pytest.mark.parametrize("shape", ["square", "portrait", "landscape", "wide", "tall"])
def test_every_shape_fits_max_size_in_multiples_of_16(shape: str) -> None:
    settings = make_settings(default_size=(512, 512), max_size=(640, 480))
    width, height = shape_size(settings, shape)
    assert width <= 640 and height <= 480
    assert width % 16 == 0 and height % 16 == 0


def test_fit_size_keeps_the_aspect_and_never_upscales_past_the_default_area() -> None:
    settings = make_settings(default_size=(512, 512), max_size=(768, 768))
    width, height = fit_size(settings, 3000, 1000)
    assert width > 2 * height and width * height <= 512 * 512
    assert fit_size(settings, 128, 128) == (128, 128)  # a small image stays small


def test_prompt_errors_become_refusals_with_examples() -> None:
    with pytest.raises(RequestRejected, match="a watercolor painting \\+ a baseball game"):
        validate_prompt(" + ")


def test_replace_is_trimmed_and_bounded() -> None:
    assert validate_replace("  red   flowers ") == "red flowers"
    assert validate_replace("") is None
    with pytest.raises(RequestRejected, match="replace"):
        validate_replace("x" * 101)


def test_a_whitespace_only_replace_is_refused_not_taken_as_the_whole_image() -> None:
    with pytest.raises(RequestRejected, match="only spaces"):
        validate_replace("   ")


def test_generation_modules_never_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys, bot.app, bot.runner, bot.enqueue, bot.requests, bot.views, bot.render, bot.attachments, cogs.generate, cogs.info, cogs.admin\n"
        "print(sorted(m for m in ('torch', 'kornia', 'clip', 'taming') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=clean_environ(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_queued_message_shows_the_eta_as_a_live_discord_timestamp() -> None:
    job = Job(id="abc", guild_id=1, channel_id=2, user_id=3, kind="imagine", prompt="p",
              iterations=10, params={"width": 64, "height": 64})
    embed = render.queued_embed(job, 2, 1090)
    assert "(#2)" in embed.description and "<t:1090:R>" in embed.description
