"""The real runner: the worker's jobs optimised by `engine.generate.Generator`, several at
once through `engine.batching.Batch` (issue 13).

What it adds to the batch: turning a `Submit` into a `GenerationRequest` (decoding its
images, each bounded by `max_image_bytes`) and a result into a `Done`, progress into
`Progress` frames with JPEG previews. Which jobs may run together, memory, and failures
are the batch's business; compiling the loop is the generator's (`engine.compiling`).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

import torch

from engine import protocol as p
from engine.batching import Batch, BatchJob, capacity_for
from engine.compiling import Compiler
from engine.generate import GenerationRequest, GenerationResult, Generator, Progress, round_size
from engine.images import jpeg_thumbnail, load_image
from engine.limits import DEFAULT_BATCH, DEFAULT_COMPILE, DEFAULT_MAX_IMAGE_BYTES, BatchSetting
from engine.models import ModelSpec, Models
from engine.prompts import ImagePrompt, TextPrompt
from engine.serving import JobEvents, ProgressCallback, run_alone

__all__ = ["GeneratorJobRunner", "load_generator_runner"]

log = logging.getLogger("engine.worker")


class GeneratorJobRunner:
    """A `BatchRunner` of up to `capacity` jobs of one size on loaded models; `compile` is
    `ENGINE_COMPILE` (auto, on, off). Input images (init image, image prompts, mask) larger
    than `max_image_bytes` fail their job."""

    def __init__(self, models: Models, max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
                 capacity: int = 1, compile: str = "off") -> None:
        self.models = models
        self.max_image_bytes = max_image_bytes
        self.generator = Generator(models, compiler=Compiler(compile, models.device))
        self.batch = Batch(self.generator, capacity)
        self.capacity = capacity
        self.device = str(models.device)
        self.vqgan = models.vqgan_name
        self.clip = models.clip_name

    @property
    def busy(self) -> bool:
        return self.batch.busy

    def can_start(self, job: p.Submit) -> bool:
        size = round_size((job.width, job.height), int(self.models.vqgan.factor))
        return self.batch.can_join(size, job.cutn)

    def start(self, job: p.Submit, events: JobEvents) -> None:
        try:
            request = self.request(job)
        except Exception as error:  # a bad image: this job only
            events.end(error)
            return

        def report(progress: Progress) -> None:
            events.progress(p.Progress(job.job, progress.iteration, progress.total,
                                       float(progress.loss), float(progress.elapsed),
                                       jpeg_thumbnail(progress.preview, job.preview_size)))

        def end(outcome: GenerationResult | BaseException) -> None:
            if isinstance(outcome, BaseException):
                events.end(outcome)
                return
            events.end(p.Done(job.job, outcome.png, int(outcome.seed), float(outcome.seconds),
                              int(outcome.iterations), outcome.image.width, outcome.image.height))

        self.batch.join(BatchJob(request, end, report if job.progress_every else None,
                                 events.should_cancel))

    def step(self) -> None:
        self.batch.step()

    def request(self, job: p.Submit) -> GenerationRequest:
        """The generator's request for `job`, its images decoded (InputImageError if one is
        not an image or is over the limit)."""
        limit = self.max_image_bytes
        return GenerationRequest(
            prompts=[TextPrompt(text=x.text, weight=x.weight) for x in job.prompts],
            image_prompts=[ImagePrompt(image=load_image(x.data, what=f"image prompt {i + 1}",
                                                        max_bytes=limit),
                                       weight=x.weight)
                           for i, x in enumerate(job.image_prompts)],
            init_image=(load_image(job.init_image, what="image to edit", max_bytes=limit)
                        if job.init_image is not None else None),
            size=(job.width, job.height), iterations=job.iterations, seed=job.seed,
            cutn=job.cutn, replace=job.replace,
            mask_image=(load_image(job.mask_image, what="mask image", keep_alpha=True,
                                   max_bytes=limit)
                        if job.mask_image is not None else None),
            # 0 = no progress events; the generator reports at least at the end.
            progress_every=job.progress_every or job.iterations,
        )

    def run(self, job: p.Submit, on_progress: ProgressCallback,
            should_cancel: Callable[[], bool]) -> p.Done:
        """One job alone, through the same steps the worker takes (the runner must be idle)."""
        return run_alone(self, job, on_progress, should_cancel)

    def free_memory(self) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def load_generator_runner(spec: ModelSpec, max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
                          batch: BatchSetting = DEFAULT_BATCH,
                          compile: str = DEFAULT_COMPILE) -> GeneratorJobRunner:
    """Load the models named by `spec` (seconds to minutes) and wrap them in a runner that
    serves `batch` jobs at once (`auto`: the device's default, `capacity_for`)."""
    from engine.models import load_models

    started = time.monotonic()
    models = load_models(spec)
    log.info("models loaded on %s in %.1f s", models.device, time.monotonic() - started)
    runner = GeneratorJobRunner(models, max_image_bytes, capacity_for(batch, models.device), compile)
    log.info("serving up to %d job(s) at once; the loop runs %s", runner.capacity,
             runner.generator.compiler.mode)
    return runner
