"""`bot.timelapse`: the frames kept per job, their bounds, and the animation."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from bot import timelapse
from bot.timelapse import animate, discard_frames, frames_dir, keep_frame, kept_frames
from tests.bot.fake_engine import jpeg_bytes, png_bytes


def test_frames_come_back_in_the_order_of_their_iterations(tmp_path: Path) -> None:
    for iteration in (100, 8, 20):
        assert keep_frame(tmp_path, "job1", iteration, jpeg_bytes(colour=(iteration, 0, 0)))
    assert kept_frames(tmp_path, "job1") == [jpeg_bytes(colour=(c, 0, 0)) for c in (8, 20, 100)]
    assert kept_frames(tmp_path, "other") == []


def test_no_more_than_max_frames_are_kept_per_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timelapse, "MAX_FRAMES", 3)
    kept = [keep_frame(tmp_path, "job1", i, jpeg_bytes()) for i in range(1, 6)]
    assert kept == [True, True, True, False, False]
    assert len(kept_frames(tmp_path, "job1")) == 3
    assert keep_frame(tmp_path, "job1", 2, jpeg_bytes())  # the same frame again replaces it


def test_no_more_than_max_frame_bytes_are_kept_per_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frame = jpeg_bytes()
    monkeypatch.setattr(timelapse, "MAX_FRAME_BYTES", 2 * len(frame) + 1)
    assert [keep_frame(tmp_path, "job1", i, frame) for i in range(1, 4)] == [True, True, False]


def test_an_empty_preview_is_not_a_frame(tmp_path: Path) -> None:
    assert not keep_frame(tmp_path, "job1", 1, b"")
    assert kept_frames(tmp_path, "job1") == []


def test_a_frame_that_cannot_be_written_is_dropped_without_raising(tmp_path: Path) -> None:
    (tmp_path / "frames").write_text("a file where the folder should be")
    assert not keep_frame(tmp_path, "job1", 1, jpeg_bytes())


def test_discarding_removes_only_that_jobs_frames(tmp_path: Path) -> None:
    keep_frame(tmp_path, "job1", 1, jpeg_bytes())
    keep_frame(tmp_path, "job2", 1, jpeg_bytes())
    discard_frames(tmp_path, "job1")
    discard_frames(tmp_path, "never-had-any")
    assert not frames_dir(tmp_path, "job1").exists() and kept_frames(tmp_path, "job2")


def test_the_animation_is_the_frames_then_the_result_at_the_frames_size() -> None:
    frames = [jpeg_bytes(32, 16, (10 * i, 0, 0)) for i in range(3)]
    webp = animate(frames, png_bytes(128, 64, (0, 0, 250)))
    with Image.open(io.BytesIO(webp)) as animation:
        assert (animation.format, animation.n_frames, animation.size) == ("WEBP", 4, (32, 16))
        animation.seek(3)
        red, green, blue = animation.convert("RGB").getpixel((16, 8))
        assert blue > 200 and red < 40  # the result comes last
        assert animation.info["duration"] == timelapse.LAST_FRAME_MS
