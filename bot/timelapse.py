"""A job's timelapse: the preview frames kept on disk while it runs, and the animated WebP
the Timelapse button posts.

The frames are the preview JPEGs the engine already streams in `Progress` events (about
`runner.PROGRESS_EVENTS_PER_JOB` per job), so the engine sends nothing extra. The runner
hands each one to `keep_frame` as it arrives, before its edit throttle thins them; they
live in RESULTS_DIR/frames/<job id>/<iteration>.jpg, beside the result RESULTS_DIR/<job
id>.png. The WebP is assembled only when someone asks (`animate`), from those frames and
the result itself as the last frame, and is not kept: once posted, the message holds it.

Bounds: at most `MAX_FRAMES` frames and `MAX_FRAME_BYTES` bytes per job; a frame past
either is dropped (the runner asks for at most about 50 events per job, each preview at
most 256 px on its long side, tens of kilobytes, so neither bound is met in practice: they
keep a misbehaving engine from filling the disk).

Clean-up (`discard_frames`): when a job starts (frames of a run interrupted by a restart
would mix with the new run's, whose seed may differ), and when it fails or is cancelled
(no result, no timelapse). A done job's frames stay as long as its result: the bot never
removes results; whatever removes `<job id>.png` removes `frames/<job id>/` with it, and
`discard_frames` is the function to call.

Pillow only (no torch): the bot decodes and encodes these small images itself.
"""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path

from PIL import Image

log = logging.getLogger(__name__)

#: The folder under RESULTS_DIR that holds one folder of frames per job.
FRAMES_DIR = "frames"
#: At most this many frames are kept per job (the runner asks for about 25, at most ~50).
MAX_FRAMES = 60
#: At most this many bytes of frames are kept per job.
MAX_FRAME_BYTES = 8 * 1024 * 1024
#: Milliseconds each frame shows; the result, the last frame, shows longer (as the CLI's
#: `--timelapse`).
FRAME_MS = 100
LAST_FRAME_MS = 1500
#: Lossy WebP quality: previews are small JPEGs already, so lossless would only be larger.
WEBP_QUALITY = 80


def frames_dir(results_dir: Path, job_id: str) -> Path:
    return results_dir / FRAMES_DIR / job_id


def keep_frame(results_dir: Path, job_id: str, iteration: int, jpeg: bytes) -> bool:
    """Keep one preview of a running job, unless it is empty or over the job's bounds.
    Returns whether it was kept. Never raises for the disk's sake (full, unwritable: logged):
    a lost frame must not cost the picture."""
    if not jpeg:
        return False
    folder = frames_dir(results_dir, job_id)
    name = f"{iteration:06d}.jpg"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        others = [path for path in folder.glob("*.jpg") if path.name != name]
        if (len(others) >= MAX_FRAMES
                or sum(path.stat().st_size for path in others) + len(jpeg) > MAX_FRAME_BYTES):
            return False
        temporary = folder / (name + ".part")
        temporary.write_bytes(jpeg)
        temporary.replace(folder / name)  # never a half-written frame under its final name
    except OSError as error:
        log.warning("job %s: could not keep a timelapse frame: %s", job_id, error)
        return False
    return True


def kept_frames(results_dir: Path, job_id: str) -> list[bytes]:
    """A job's frames, in the order of their iterations (empty if none were kept)."""
    folder = frames_dir(results_dir, job_id)
    if not folder.is_dir():
        return []
    return [path.read_bytes() for path in sorted(folder.glob("*.jpg"))]


def discard_frames(results_dir: Path, job_id: str) -> None:
    """Remove a job's frames (nothing happens if it has none)."""
    shutil.rmtree(frames_dir(results_dir, job_id), ignore_errors=True)


def animate(frames: list[bytes], result_png: bytes) -> bytes:
    """The animated WebP: every frame at the size of the first, then the result scaled to
    that size, shown a little longer. Runs for tens of milliseconds on ~25 small frames;
    callers keep it off the event loop anyway (`asyncio.to_thread`)."""
    images = [_rgb(data) for data in frames]
    size = images[0].size if images else _rgb(result_png).size
    images = [image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)
              for image in images]
    images.append(_rgb(result_png).resize(size, Image.Resampling.LANCZOS))
    buffer = io.BytesIO()
    images[0].save(buffer, format="WEBP", save_all=True, append_images=images[1:],
                   duration=[FRAME_MS] * (len(images) - 1) + [LAST_FRAME_MS], loop=0,
                   quality=WEBP_QUALITY)
    return buffer.getvalue()


def _rgb(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")
