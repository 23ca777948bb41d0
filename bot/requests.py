"""A user's request as the bot understands it, and the checks that need no Discord call.

Every way of asking (`/imagine`, `/edit`, the "Edit image" menu and modal, the Reroll,
Vary and Edit buttons) builds a `JobRequest` with these functions, so they all refuse bad
input the same way, before anything is stored, queued or charged. Each refusal is a
`RequestRejected`, whose text the one error handler shows to the user as is.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot import render
from bot.attachments import CheckedImage
from bot.config import MIN_SIDE, SIZE_MULTIPLE, Settings
from bot.errors import UserError
from bot.jobs import ImageSource, Job, JobKind
from bot.store import MemberSettings
from engine.errors import EngineError, PromptError
from engine.limits import check_seed
from engine.prompts import TextPrompt, parse_prompt

#: Longest source phrase for a masked edit (`replace:`).
MAX_REPLACE_CHARS = 100
#: Size shapes offered by `/imagine size:`; the aspect ratio is width / height.
SHAPES: dict[str, float] = {
    "square": 1.0,
    "portrait": 3 / 4,
    "landscape": 4 / 3,
    "wide": 16 / 9,
    "tall": 9 / 16,
}


class RequestRejected(UserError):
    """A request refused before anything was queued; `str(e)` tells the user the fix."""


@dataclass(frozen=True)
class StoredImage:
    """An image already on disk under RESULTS_DIR (a previous result or input)."""

    path: str  # relative to RESULTS_DIR


InputImage = StoredImage | CheckedImage


@dataclass
class JobRequest:
    """Everything one job needs, validated except for the queue and quota checks."""

    kind: JobKind
    prompt: str
    width: int
    height: int
    iterations: int
    seed: int | None = None
    init_image: InputImage | None = None
    image_prompt: InputImage | None = None
    replace: str | None = None
    parent_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: Where an edit's image was found, named in the queued answer (not stored).
    source: ImageSource | None = None


# --------------------------------------------------------------------------- validation


def validate_prompt(prompt: str) -> list[TextPrompt]:
    """Parse with the engine's grammar; a `PromptError` becomes a refusal with the fix."""
    try:
        return parse_prompt(prompt)
    except PromptError as error:
        raise RequestRejected(render.prompt_unusable(str(error))) from None


def validate_replace(replace: str | None) -> str | None:
    """The source phrase of a masked edit: plain text, no grammar (it names what to change)."""
    if replace is None or replace == "":
        return None
    text = " ".join(replace.split())
    if not text:
        raise RequestRejected(render.REPLACE_ONLY_SPACES)
    if len(text) > MAX_REPLACE_CHARS:
        raise RequestRejected(render.replace_too_long(len(text), MAX_REPLACE_CHARS))
    return text


def validate_iterations(settings: Settings, iterations: int | None) -> int:
    if iterations is None:
        return settings.default_iterations
    if iterations < 1 or iterations > settings.max_iterations:
        raise RequestRejected(render.iterations_out_of_range(
            iterations, settings.max_iterations, settings.default_iterations))
    return iterations


def member_iterations(settings: Settings, member: MemberSettings) -> int | None:
    """The member's own default iterations (`/settings`) within today's MAX_ITERATIONS
    (it may have been lowered since they chose), or None when they set none."""
    if member.iterations is None:
        return None
    return max(1, min(member.iterations, settings.max_iterations))


def member_shape(member: MemberSettings) -> str | None:
    """The member's own default shape (`/settings`), if it is still one of SHAPES."""
    return member.shape if member.shape in SHAPES else None


def _round_down(value: float) -> int:
    return max(MIN_SIDE, int(value // SIZE_MULTIPLE) * SIZE_MULTIPLE)


def shape_size(settings: Settings, shape: str | None) -> tuple[int, int]:
    """The pixel size of a shape: about as many pixels as DEFAULT_SIZE, never above MAX_SIZE
    in either side, both sides multiples of 16 (the VQGAN block size).

    No shape means exactly DEFAULT_SIZE.
    """
    if shape is None:
        return settings.default_size
    aspect = SHAPES[shape]
    default_w, default_h = settings.default_size
    max_w, max_h = settings.max_size
    area = default_w * default_h
    height = math.sqrt(area / aspect)
    width = aspect * height
    scale = min(1.0, max_w / width, max_h / height)
    return min(max_w, _round_down(width * scale)), min(max_h, _round_down(height * scale))


def fit_size(settings: Settings, width: int, height: int) -> tuple[int, int]:
    """The working size for editing a `width`×`height` image: its aspect ratio, about as
    many pixels as DEFAULT_SIZE (never more than the image has), within MAX_SIZE."""
    aspect = max(0.25, min(4.0, width / max(1, height)))
    default_w, default_h = settings.default_size
    max_w, max_h = settings.max_size
    area = min(default_w * default_h, max(width * height, MIN_SIDE * MIN_SIDE))
    new_h = math.sqrt(area / aspect)
    new_w = aspect * new_h
    scale = min(1.0, max_w / new_w, max_h / new_h)
    return min(max_w, _round_down(new_w * scale)), min(max_h, _round_down(new_h * scale))


def job_size(settings: Settings, job: Job) -> tuple[int, int]:
    """The size a stored job asked for (`width`/`height` in its params); DEFAULT_SIZE for
    a side its params lack."""
    return (int(job.params.get("width") or settings.default_size[0]),
            int(job.params.get("height") or settings.default_size[1]))


def validate_seed(seed: int | None) -> int | None:
    """The engine's seed range (`engine.limits`), the one the CLI uses too."""
    if seed is None:
        return None
    try:
        return check_seed(seed)
    except EngineError as error:
        raise RequestRejected(render.seed_unusable(str(error))) from None


def stored_input(results_dir: Path, path: str | None) -> StoredImage | None:
    """A stored image that is still on disk (None for no image), else `RequestRejected`."""
    if path is None:
        return None
    if not os.path.isfile(results_dir / path):
        raise RequestRejected(render.STORED_IMAGE_GONE)
    return StoredImage(path)


def reroll_request(settings: Settings, results_dir: Path, job: Job) -> JobRequest:
    """Same prompt and parameters as `job`, a new seed."""
    params = job.params
    width, height = job_size(settings, job)
    return JobRequest(
        kind=JobKind.REROLL,
        prompt=job.prompt,
        width=width,
        height=height,
        iterations=min(job.iterations, settings.max_iterations),
        seed=None,
        init_image=stored_input(results_dir, job.input_path),
        image_prompt=stored_input(results_dir, params.get("image_prompt_path")),
        replace=params.get("replace"),
        parent_id=job.id,
        extra=_full_run(params),
    )


# ---- issue 11 item 7: Vary

#: A Vary runs this fraction of the iterations of the run that made the image it varies.
VARY_FRACTION = 0.25


def vary_iterations(settings: Settings, full_iterations: int) -> int:
    """A quarter of the full run, rounded up (and within MAX_ITERATIONS).

    Why a quarter: a Vary starts from the finished image, where the loss is already low;
    with a new seed the cutouts (section 2.3) are new, so the image moves towards what the
    new views of the same prompt favour. Adam moves each latent entry by about the learning
    rate per step whatever the gradient's size, so how far the image can drift grows with
    the number of steps: a quarter of the run is long enough to rework details and short
    enough to keep the composition, and it costs a quarter of the GPU time. The α·mean(z²)
    term (section 2.4) decays over these steps as over any run. A choice by that reasoning,
    not measured on real models (the tests' tiny models make noise).
    """
    return max(1, min(settings.max_iterations, math.ceil(full_iterations * VARY_FRACTION)))


def vary_request(settings: Settings, results_dir: Path, job: Job) -> JobRequest:
    """A short re-optimisation of `job`'s result: the same prompt (and `replace`, image
    prompt and size), a new seed, the result as the image to start from, and
    `vary_iterations` of the full run. The full run's length travels in the params
    (`full_iterations`), so a Vary of a Vary (or of its Reroll) is as long as the first."""
    source = stored_input(results_dir, job.result_path) if job.result_path else None
    if source is None:
        raise RequestRejected(render.no_result_text(job, render.VARY_VERB))
    params = job.params
    full = int(params.get("full_iterations") or job.iterations)
    width, height = job_size(settings, job)
    return JobRequest(
        kind=JobKind.VARY,
        prompt=job.prompt,
        width=width,
        height=height,
        iterations=vary_iterations(settings, full),
        seed=None,
        init_image=source,
        image_prompt=stored_input(results_dir, params.get("image_prompt_path")),
        replace=params.get("replace"),
        parent_id=job.id,
        extra={"full_iterations": full},
    )


def _full_run(params: dict[str, Any]) -> dict[str, Any]:
    """The `full_iterations` a Vary records, for a job made from one (else nothing)."""
    return {"full_iterations": params["full_iterations"]} if params.get("full_iterations") else {}
