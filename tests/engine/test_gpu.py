"""The loop on a CUDA GPU, in bf16 and in fp16. Skipped without one.

    .venv/bin/python -m pytest -q tests/engine/test_gpu.py

What only a GPU can show: that nothing in the loop makes the host wait for the device
between progress points (torch's sync debug mode raises at the first operation that would),
that the mixed-precision paths compute what the fp32 CPU loop computes, and that the cutouts
leave every GPU's RNG as they found it. tests/engine/test_generate_numerics.py shows the
device-independent parts of this on the CPU.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from PIL import Image

import engine.generate
from engine.cutouts import MakeCutouts
from engine.generate import GenerationRequest, Generator, Numerics, Progress
from engine.models.loading import Models
from engine.prompts import parse_prompt
from tests.engine.loop_helpers import psnr

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _load(tiny_models, device: str) -> Models:
    """f16 VQModel: 64 px is 4x4 tokens, and one step of lr 0.15 already switches codes."""
    from engine.models import ModelSpec, load_models

    return load_models(ModelSpec(vqgan=tiny_models.vqgan_name, clip=tiny_models.clip_name,
                                 model_dir=tiny_models.directory, device=device))


@pytest.fixture(scope="module")
def gpu_models(tiny_models) -> Models:
    return _load(tiny_models, "cuda")


@pytest.fixture(scope="module")
def cpu_models(tiny_models) -> Models:
    return _load(tiny_models, "cpu")


def _native_bf16() -> bool:
    return torch.cuda.get_device_capability()[0] >= 8


def _numerics(precision: str) -> Numerics:
    """The two GPU paths, whatever this GPU would be given by default: the decoder in bf16
    or fp16, the loss scaled (CLIP is fp16 on CUDA either way)."""
    if precision == "bf16" and not _native_bf16():
        pytest.skip("this GPU computes bf16 only by emulation; the loop would not choose it")
    return Numerics(torch.bfloat16 if precision == "bf16" else torch.float16, scale_gradients=True)


def _request(**kwargs: Any) -> GenerationRequest:
    defaults: dict[str, Any] = dict(prompts=parse_prompt("a red apple"), size=(64, 64), iterations=6, seed=1, cutn=8)
    defaults.update(kwargs)
    return GenerationRequest(**defaults)


def _source() -> Image.Image:
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    image.paste((20, 40, 220), (0, 0, 32, 64))
    return image


# -- no syncs --------------------------------------------------------------------------------

LOOP_KINDS = {
    "generation": dict(),
    "plain edit keeping structure": dict(init_image=_source(), keep_structure=0.5),
    "masked edit with the G.2 term": dict(init_image=_source(), replace="blue paint"),
}


@pytest.mark.parametrize("kind", LOOP_KINDS.values(), ids=list(LOOP_KINDS))
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_the_loop_never_syncs_between_progress_points(
        gpu_models: Models, monkeypatch: pytest.MonkeyPatch, precision: str, kind: dict[str, Any]) -> None:
    """Sync debug mode "error" from the end of the first progress point to the start of the
    last: any operation that makes the host wait for the GPU raises. The first iteration may
    set things up (the optimizer's state, the loss scale), and the progress points and the
    result read from the device by design."""
    generator = Generator(gpu_models, _numerics(precision))
    report, finish = generator.report, generator.finish

    def strict_after_report(*args: Any) -> None:
        torch.cuda.set_sync_debug_mode(0)
        try:
            report(*args)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    def lenient_finish(*args: Any) -> Any:
        torch.cuda.set_sync_debug_mode(0)
        return finish(*args)

    monkeypatch.setattr(generator, "report", strict_after_report)
    monkeypatch.setattr(generator, "finish", lenient_finish)
    seen: list[Progress] = []
    try:
        result = generator.run(_request(progress_every=2, **kind), on_progress=seen.append)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert [p.iteration for p in seen] == [2, 4, 6]
    assert math.isfinite(result.loss)


# -- the same numbers as the fp32 CPU loop -----------------------------------------------------

class HostCutouts(MakeCutouts):
    """Cutouts made on the host, then moved to the image's device. The GPU's RNG is not the
    host's, so a GPU run would otherwise see other cutouts than a CPU run; with these both
    see the same, and what differs is the decoder's, CLIP's and the optimizer's arithmetic."""

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return super().forward(x.float().cpu(), generator).to(x.device)


def _previews(models: Models, numerics: Numerics | None, request: GenerationRequest) -> tuple[list[Image.Image], Any]:
    previews: list[Image.Image] = []
    result = Generator(models, numerics).run(request, on_progress=lambda progress: previews.append(progress.preview))
    return previews, result


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_the_first_step_on_the_gpu_moves_the_image_as_on_the_cpu(
        gpu_models: Models, cpu_models: Models, monkeypatch: pytest.MonkeyPatch, precision: str, seed: int) -> None:
    """After one step the GPU's image is closer to the fp32 CPU's than the start is: the
    gradient came through CLIP's fp16 and the decoder's low precision with the right signs,
    neither underflowed to nothing nor overflowed into a skipped step.

    A CPU emulation of these numerics (CLIP in fp16, the decoder under CPU autocast, the loss
    scaled), seeds 0-3: PSNR to the CPU's image after one step 29.7-43.6 dB in bf16 and
    56.1-57.0 dB in fp16, against 25.7-32.2 dB for the unmoved start; per seed the margin was
    at least 4 dB.
    """
    monkeypatch.setattr(engine.generate, "MakeCutouts", HostCutouts)
    request = _request(iterations=2, seed=seed, progress_every=1, preview_size=64)
    (gpu_start, gpu_step), _ = _previews(gpu_models, _numerics(precision), request)
    (cpu_start, cpu_step), _ = _previews(cpu_models, None, request)
    assert psnr(gpu_step, cpu_step) > psnr(cpu_start, cpu_step), (
        psnr(gpu_step, cpu_step), psnr(cpu_start, cpu_step))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_20_iterations_on_the_gpu_stay_near_the_fp32_cpu_result(
        gpu_models: Models, cpu_models: Models, monkeypatch: pytest.MonkeyPatch, precision: str) -> None:
    """A guard against numerics that break (NaN or inf in z, a saturated or blank image), not a
    measure of precision: the tiny models' runs are chaotic, every code switch changing the
    rest of the run. In a CPU emulation of these numerics the 20-iteration result scored
    13.5-15.5 dB against the fp32 one, about as far as another seed's result (13.3-14.4 dB);
    a black image scores 5.3-5.5 dB. The first-step test above is the sharp one."""
    monkeypatch.setattr(engine.generate, "MakeCutouts", HostCutouts)
    request = _request(iterations=20, seed=3)
    _, gpu = _previews(gpu_models, _numerics(precision), request)
    _, cpu = _previews(cpu_models, None, request)
    assert math.isfinite(gpu.loss)
    assert psnr(gpu.image, cpu.image) >= 10.0, psnr(gpu.image, cpu.image)


# -- precision per part -------------------------------------------------------------------------

@pytest.mark.skipif(bool(torch.version.hip), reason="ROCm reports bf16 support on every GPU")
def test_bf16_is_chosen_exactly_where_this_gpu_computes_it_natively(gpu_models: Models) -> None:
    expected = torch.bfloat16 if _native_bf16() else torch.float16
    assert Numerics.for_models(gpu_models) == Numerics(expected, scale_gradients=True)


def test_clip_runs_in_fp16_without_autocast_and_the_final_image_in_fp32(
        gpu_models: Models, monkeypatch: pytest.MonkeyPatch) -> None:
    decoder: list[bool] = []
    clip: list[bool] = []
    decode, encode_image = gpu_models.vqgan.decode, gpu_models.perceptor.encode_image

    def recording_decode(z_q: torch.Tensor) -> torch.Tensor:
        decoder.append(torch.is_autocast_enabled("cuda"))
        return decode(z_q)

    def recording_encode_image(x: torch.Tensor) -> torch.Tensor:
        clip.append(torch.is_autocast_enabled("cuda"))
        return encode_image(x)

    monkeypatch.setattr(gpu_models.vqgan, "decode", recording_decode)
    monkeypatch.setattr(gpu_models.perceptor, "encode_image", recording_encode_image)
    Generator(gpu_models).run(_request(iterations=2))
    assert gpu_models.perceptor.dtype == torch.float16
    assert clip and not any(clip)
    assert decoder == [True, True, False]


# -- the cutouts' RNG ----------------------------------------------------------------------------

def test_cutouts_restore_the_rng_of_every_gpu() -> None:
    """The cutouts seed the host's RNG and their image's GPU's, and restore exactly those:
    `torch.manual_seed` would reseed every GPU, and `fork_rng` restore only the one named."""
    cutouts = MakeCutouts(cut_size=24, cutn=4)
    images = [torch.rand(1, 3, 32, 32, device=f"cuda:{i}") for i in range(torch.cuda.device_count())]
    host, gpus = torch.get_rng_state(), [torch.cuda.get_rng_state(i) for i in range(len(images))]
    for image in images:
        cutouts(image, torch.Generator().manual_seed(1))
    assert torch.equal(host, torch.get_rng_state())
    assert all(torch.equal(state, torch.cuda.get_rng_state(i)) for i, state in enumerate(gpus))


def test_the_same_seed_gives_the_same_cutouts_on_the_gpu() -> None:
    cutouts = MakeCutouts(cut_size=24, cutn=4)
    image = torch.rand(1, 3, 32, 32, device="cuda")
    first, again, other = (cutouts(image, torch.Generator().manual_seed(seed)) for seed in (7, 7, 8))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
