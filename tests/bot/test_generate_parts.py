"""The pieces behind the generation surface, without Discord: wording, sizes, image checks."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

import bot.attachments as attachments
from bot import render
from bot.jobs import Job
from bot.submission import RequestRejected, fit_size, shape_size, validate_prompt, validate_replace
from tests.bot.conftest import clean_environ, make_settings
from tests.bot.fake_engine import png_bytes


def test_progress_bar_fills_with_the_fraction_done() -> None:
    assert render.progress_bar(0, 10, width=10) == "░" * 10 + " 0%"
    assert render.progress_bar(5, 10, width=10) == "█" * 5 + "░" * 5 + " 50%"
    assert render.progress_bar(12, 10, width=10) == "█" * 10 + " 100%"


@pytest.mark.parametrize(("seconds", "text"), [(0.2, "1 s"), (44.1, "45 s"), (61, "2 min"),
                                               (3600, "1 h"), (3700, "1 h 2 min")])
def test_format_seconds_is_coarse_and_never_promises_early(seconds: float, text: str) -> None:
    assert render.format_seconds(seconds) == text


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
    assert validate_replace("   ") is None
    with pytest.raises(RequestRejected, match="replace"):
        validate_replace("x" * 101)


def fake_attachment(**fields: object) -> SimpleNamespace:
    defaults = dict(filename="a.png", content_type="image/png", size=100, width=None, height=None)
    return SimpleNamespace(**{**defaults, **fields})


def test_metadata_check_uses_discords_width_and_height_before_downloading() -> None:
    with pytest.raises(attachments.AttachmentError, match="8000×8000"):
        attachments.check_metadata(fake_attachment(width=8000, height=8000))  # type: ignore[arg-type]


def test_metadata_check_falls_back_to_the_extension_without_a_content_type() -> None:
    attachments.check_metadata(fake_attachment(content_type=None, filename="b.JPG"))  # type: ignore[arg-type]
    with pytest.raises(attachments.AttachmentError, match="not an image"):
        attachments.check_metadata(fake_attachment(content_type=None, filename="b.exe"))  # type: ignore[arg-type]


def test_header_check_refuses_a_decompression_bomb_without_decoding_it() -> None:
    # 25 megapixels of one colour compress to a few KB: small upload, huge decode. The
    # check reads only the size in the header (IHDR) and refuses it.
    buffer = io.BytesIO()
    Image.new("1", (5000, 5000)).save(buffer, "PNG")
    assert len(buffer.getvalue()) < attachments.MAX_BYTES
    with pytest.raises(attachments.AttachmentError, match="5000×5000 pixels"):
        attachments.check_bytes(buffer.getvalue(), "bomb.png")


def test_header_check_refuses_formats_the_engine_does_not_take() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "TIFF")
    with pytest.raises(attachments.AttachmentError, match="TIFF"):
        attachments.check_bytes(buffer.getvalue(), "scan.tif")


def test_checked_image_reports_format_and_size() -> None:
    checked = attachments.check_bytes(png_bytes(40, 30), "ok.png")
    assert (checked.extension, checked.width, checked.height) == ("png", 40, 30)


def test_inputs_are_saved_under_results_dir_inputs(tmp_path: Path) -> None:
    checked = attachments.check_bytes(png_bytes(8, 8), "x.png")
    relative = attachments.save_input(tmp_path, "job1", checked)
    assert relative == "inputs/job1.png"
    assert (tmp_path / relative).read_bytes() == checked.data
    assert not list(tmp_path.rglob("*.part"))


def test_generation_modules_never_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys, bot.runner, bot.submission, bot.views, bot.render, bot.attachments, cogs.generate\n"
        "print(sorted(m for m in ('torch', 'kornia', 'clip', 'taming') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=clean_environ(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_queued_message_shows_the_eta_as_a_live_discord_timestamp() -> None:
    job = Job(id="abc", guild_id=1, channel_id=2, user_id=3, kind="imagine", prompt="p",
              iterations=10, params={"width": 64, "height": 64})
    embed = render.queued_embed(job, 2, 90.0, now=1000.0)
    assert "(#2)" in embed.description and "<t:1090:R>" in embed.description
