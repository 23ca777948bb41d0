"""engine/batching.py: several jobs of one size optimised as one batch, on tiny models (CPU).

The promise is that batching changes nothing a user sees: a job's image in a batch is the
image it makes alone (up to the rounding of batched kernels, measured as PSNR against the
job alone), whoever it shares the batch with, whenever it joins or leaves. And that a job
that fails, is cancelled or does not fit in memory takes nobody else down.
"""

from __future__ import annotations

import logging

import pytest
import torch
from PIL import Image

from engine.batching import Batch, BatchJob, MemoryGuard, capacity_for
from engine.errors import Cancelled, OutOfMemoryError, PromptError
from engine.generate import GenerationRequest, GenerationResult, Generator, Progress
from engine.limits import AUTO_BATCH_CPU, AUTO_BATCH_CUDA, out_of_memory_advice
from engine.prompts import ImagePrompt, parse_prompt
from tests.engine.loop_helpers import psnr

#: A job in a batch must make the image it makes alone to at least this PSNR (8-bit RGB).
MIN_PSNR_DB = 40.0


@pytest.fixture(scope="module")
def models(tiny_models):
    """f8 GumbelVQ: 32 px is 4x4 tokens, the cheapest model with spatial structure."""
    from engine.models import ModelSpec, load_models

    return load_models(ModelSpec(vqgan=tiny_models.gumbel_name, clip=tiny_models.clip_name,
                                 model_dir=tiny_models.directory, device="cpu"))


@pytest.fixture
def generator(models) -> Generator:
    return Generator(models)


def _source() -> Image.Image:
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    image.paste((20, 40, 220), (0, 0, 16, 32))
    return image


def _mask() -> Image.Image:
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))
    return mask


def _requests() -> list[GenerationRequest]:
    """Three jobs of one size that share nothing else: prompts and weights, seeds, an image
    prompt, an edit with a mask, iterations, lr, regulariser, cutouts."""
    return [
        GenerationRequest(prompts=parse_prompt("a red apple"), size=(32, 32), iterations=8, seed=1,
                          cutn=4, progress_every=2),
        GenerationRequest(prompts=parse_prompt("a blue sea:2 + clouds:-0.5"), size=(32, 32),
                          iterations=6, seed=2, cutn=3, lr=0.2, l2_weight=0.3, l2_decay="step",
                          image_prompts=[ImagePrompt(_source(), 0.5)], progress_every=3),
        GenerationRequest(prompts=parse_prompt("a green field"), size=(32, 32), iterations=10,
                          seed=3, cutn=5, init_image=_source(), mask_image=_mask(),
                          keep_structure=0.5, progress_every=5),
    ]


class Recorder:
    """One job's events, as the batch hands them out."""

    def __init__(self, request: GenerationRequest, cancel_after: int | None = None) -> None:
        self.request = request
        self.progress: list[int] = []
        self.ended: list[GenerationResult | BaseException] = []
        self.cancel_after = cancel_after
        self.job = BatchJob(request, self.ended.append, self.on_progress, self.should_cancel)

    def on_progress(self, progress: Progress) -> None:
        assert not self.ended
        self.progress.append(progress.iteration)

    def should_cancel(self) -> bool:
        state = self.job.state
        return self.cancel_after is not None and state is not None and state.iteration >= self.cancel_after

    @property
    def result(self) -> GenerationResult:
        assert len(self.ended) == 1, self.ended
        result = self.ended[0]
        assert isinstance(result, GenerationResult), result
        return result


def drain(batch: Batch, joins: dict[int, list[Recorder]]) -> int:
    """Step `batch` until idle; jobs in `joins[k]` join before step k (0-based)."""
    steps = 0
    while batch.busy or any(k >= steps for k in joins):
        for recorder in joins.pop(steps, []):
            assert recorder.job.state is None
            size = batch.generator.size_of(recorder.request)
            assert batch.can_join(size, recorder.request.cutn)
            batch.join(recorder.job)
        batch.step()
        steps += 1
    return steps


def alone(generator: Generator, request: GenerationRequest) -> GenerationResult:
    return Generator(generator.models).run(request)


def test_a_job_in_a_batch_of_3_makes_the_image_it_makes_alone(generator: Generator, monkeypatch) -> None:
    decoded: list[int] = []  # the batch size of each decode: batched, not one job after another
    synth = generator._synth_in_loop
    monkeypatch.setattr(generator, "_synth_in_loop", lambda z: decoded.append(len(z)) or synth(z))
    recorders = [Recorder(request) for request in _requests()]
    batch = Batch(generator, capacity=3)
    drain(batch, {0: recorders})
    assert decoded == [3] * 6 + [2] * 2 + [1] * 2  # the jobs leave after 6, 8 and 10 iterations
    figures = []
    for recorder in recorders:
        result = recorder.result
        by_itself = alone(generator, recorder.request)
        assert result.seed == by_itself.seed and result.size == by_itself.size
        figures.append(psnr(result.image, by_itself.image))
        every = recorder.request.progress_every
        assert recorder.progress == [i for i in range(1, recorder.request.iterations + 1)
                                     if i % every == 0 or i == recorder.request.iterations]
    print(f"PSNR of each job in a batch of 3 against the job alone: "
          f"{', '.join(f'{x:.2f} dB' for x in figures)}")
    assert min(figures) >= MIN_PSNR_DB
    assert not batch.busy


def test_jobs_join_and_leave_at_iteration_boundaries_without_disturbing_the_others(
        generator: Generator) -> None:
    first, cancelled, late = (Recorder(request) for request in _requests())
    cancelled.cancel_after = 4  # cancelled after its 4th iteration: it reported the 3rd
    batch = Batch(generator, capacity=3)
    drain(batch, {0: [first], 2: [cancelled], 3: [late]})
    assert len(cancelled.ended) == 1 and isinstance(cancelled.ended[0], Cancelled)
    assert cancelled.progress == [3]
    for recorder in (first, late):
        assert psnr(recorder.result.image, alone(generator, recorder.request).image) >= MIN_PSNR_DB


def test_a_job_alone_in_a_batch_is_byte_identical_to_the_generator_run(generator: Generator) -> None:
    request = _requests()[2]
    recorder = Recorder(request)
    drain(Batch(generator, capacity=4), {0: [recorder]})
    assert recorder.result.png == alone(generator, request).png


def test_a_batch_takes_only_jobs_of_its_size_while_it_has_room(generator: Generator) -> None:
    batch = Batch(generator, capacity=2)
    assert batch.can_join((64, 32), 4)  # nothing runs: anything may start
    batch.join(Recorder(_requests()[0]).job)
    assert batch.size == (32, 32)
    assert not batch.can_join((64, 32), 4)
    assert batch.can_join((32, 32), 4)
    batch.join(Recorder(_requests()[1]).job)
    assert not batch.can_join((32, 32), 4)  # full


def test_a_job_that_cannot_start_ends_at_once_and_the_batch_goes_on(generator: Generator) -> None:
    good = Recorder(_requests()[0])
    bad = Recorder(GenerationRequest(prompts=[], size=(32, 32), iterations=2))
    batch = Batch(generator, capacity=3)
    drain(batch, {0: [good, bad]})
    assert len(bad.ended) == 1 and isinstance(bad.ended[0], PromptError)
    assert good.result.iterations == good.request.iterations


def test_a_job_whose_step_fails_fails_alone_and_the_others_finish(generator: Generator, monkeypatch) -> None:
    recorders = [Recorder(request) for request in _requests()]
    doomed = recorders[1]
    loss = generator._loss

    def failing_loss(job, embeds):
        if job.request is doomed.request and job.iteration == 3:
            raise ValueError("a bug in one job's loss")
        return loss(job, embeds)

    monkeypatch.setattr(generator, "_loss", failing_loss)
    drain(Batch(generator, capacity=3), {0: recorders})
    assert len(doomed.ended) == 1 and isinstance(doomed.ended[0], ValueError)
    assert doomed.progress == [3]  # it failed in its 4th iteration
    for recorder in (recorders[0], recorders[2]):
        assert psnr(recorder.result.image, alone(generator, recorder.request).image) >= MIN_PSNR_DB


def _out_of_memory_above(generator: Generator, monkeypatch, limit: int, sizes: list[int]) -> None:
    """Steps of more than `limit` jobs run out of GPU memory (the size tried is recorded)."""
    step = generator.step

    def step_or_run_out(jobs):
        sizes.append(len(jobs))
        if len(jobs) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        step(jobs)

    monkeypatch.setattr(generator, "step", step_or_run_out)


def test_out_of_memory_in_a_batch_sets_the_newest_aside_and_every_job_still_finishes(
        generator: Generator, monkeypatch, caplog) -> None:
    sizes: list[int] = []
    _out_of_memory_above(generator, monkeypatch, 2, sizes)
    recorders = [Recorder(request) for request in _requests()]
    batch = Batch(generator, capacity=3)
    with caplog.at_level(logging.WARNING, logger="engine.batching"):
        drain(batch, {0: recorders})
    assert sizes[:2] == [3, 2] and max(sizes[1:]) == 2  # 3 failed once and was not tried again
    assert batch.limits == {(32, 32): 2}
    assert "out of GPU memory with 3 jobs of 32x32: at most 2 from now on" in caplog.text
    for recorder in recorders:  # the set-aside job came back when there was room
        assert psnr(recorder.result.image, alone(generator, recorder.request).image) >= MIN_PSNR_DB


def test_only_a_job_that_does_not_fit_alone_fails_and_the_batch_keeps_serving(
        generator: Generator, monkeypatch) -> None:
    step = generator.step
    huge_cutn = 7

    def step_or_run_out(jobs):
        if any(job.request.cutn == huge_cutn for job in jobs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        step(jobs)

    monkeypatch.setattr(generator, "step", step_or_run_out)
    fits, huge = Recorder(_requests()[0]), Recorder(_requests()[1])
    huge.request.cutn = huge_cutn
    batch = Batch(generator, capacity=3)
    drain(batch, {0: [fits, huge]})
    assert len(huge.ended) == 1 and isinstance(huge.ended[0], OutOfMemoryError)
    assert str(huge.ended[0]) == out_of_memory_advice((32, 32), int(generator.models.vqgan.factor))
    assert psnr(fits.result.image, alone(generator, fits.request).image) >= MIN_PSNR_DB
    after = Recorder(_requests()[2])  # and the engine goes on serving
    drain(batch, {0: [after]})
    assert after.result.iterations == after.request.iterations


def test_the_memory_guard_waits_for_a_measured_step_and_refuses_what_would_not_fit() -> None:
    counters = {"allocated": 1000, "peak": 0}
    guard = MemoryGuard(budget=10_000, allocated=lambda: counters["allocated"],
                        peak=lambda: counters["peak"], reset_peak=lambda: None)
    size = (512, 512)
    assert guard.fits(size, 32, running=0)  # nothing runs: a job always starts alone
    assert not guard.fits(size, 32, running=1)  # nothing measured at this size yet: wait
    with guard.measure(size, [32, 32]):
        counters["peak"] = 1000 + 2 * 3000  # two jobs took 3000 each above what was held
    assert guard.fits(size, 32, running=2)  # 7000 + 3000 <= 10000
    assert not guard.fits(size, 64, running=2)  # twice the cutouts: 7000 + 6000
    assert not guard.fits((256, 256), 32, running=1)
    assert MemoryGuard(None).fits(size, 32, running=63)  # the CPU: no budget


def test_the_memory_guard_counts_what_the_gpu_holds_beyond_what_is_allocated() -> None:
    """Replayed CUDA graphs allocate nothing: their activations sit in the graphs' pool, held
    (reserved) but not counted as allocated. The guard plans from what is held."""
    counters = {"allocated": 1000, "peak": 0, "held": 0}
    guard = MemoryGuard(budget=10_000, allocated=lambda: counters["allocated"],
                        peak=lambda: counters["peak"], reset_peak=lambda: None,
                        held=lambda: counters["held"])
    size = (512, 512)
    with guard.measure(size, [32, 32]):
        counters["peak"], counters["held"] = 1000 + 2 * 2000, 8500  # a pool of 3500 beyond
    assert not guard.fits(size, 32, running=2)  # 8500 held + 2000 > 10000, though 5000 + 2000 is not
    with guard.measure(size, [32, 32]):
        counters["held"] = 6000
    assert guard.fits(size, 32, running=2)  # 6000 + 2000


def test_a_job_that_would_not_fit_waits_for_the_batch_to_shrink(generator: Generator) -> None:
    """The guard sees the first step's peak (2 GB held, 5 GB per job) in a 10 GB budget: a
    second job would need 12 GB, so it waits; once the batch is empty it starts alone."""
    counters = {"allocated": 2 << 30, "peak": 0}

    def peak() -> int:
        counters["peak"] = counters["allocated"] + 5 * (1 << 30) * len(batch.running)
        return counters["peak"]

    guard = MemoryGuard(budget=10 << 30, allocated=lambda: counters["allocated"], peak=peak,
                        reset_peak=lambda: None)
    batch = Batch(generator, capacity=4, memory=guard)
    first, second = Recorder(_requests()[0]), Recorder(_requests()[2])
    batch.join(first.job)
    assert not batch.can_join((32, 32), second.request.cutn)  # nothing measured yet
    batch.step()
    assert not batch.can_join((32, 32), second.request.cutn)  # measured: 7 + 5 > 10 GB
    while batch.busy:
        batch.step()
    assert first.result.iterations == first.request.iterations
    assert batch.can_join((32, 32), second.request.cutn)  # alone it starts


def test_batch_auto_is_measured_per_device_and_numbers_are_kept() -> None:
    assert capacity_for("auto", "cpu") == AUTO_BATCH_CPU
    assert capacity_for("auto", "cuda") == AUTO_BATCH_CUDA
    assert capacity_for(5, "cpu") == 5
    for bad in (0, 65, "5", True):
        with pytest.raises(ValueError):
            capacity_for(bad, "cpu")  # type: ignore[arg-type]
