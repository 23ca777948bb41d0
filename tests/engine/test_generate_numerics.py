"""How the loop computes: which precision each part runs in, and that nothing waits for the device.

A GPU runs ahead of the host until the host reads a result back (or copies to the GPU with a
blocking copy, which waits for everything queued before it). The loop may do either only at
progress points, or every iteration would wait for the last one to finish.

Without a GPU this is shown on PyTorch's meta device: its tensors have shapes but no data, so
any read from it raises, while the host side (kornia's parameters, the optimizer's step count)
runs for real. Blocking host-to-device copies are recorded by a dispatch mode.
tests/engine/test_gpu.py shows the same on a GPU with torch's sync debug mode.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

import engine.generate
from engine.generate import GenerationRequest, Generator, Numerics
from engine.masking import Mask
from engine.models.clip_model import Perceptor
from engine.models.loading import Models
from engine.prompts import ImagePrompt, parse_prompt

META = torch.device("meta")


def _load(tiny_models) -> Models:
    from engine.models import ModelSpec, load_models

    return load_models(ModelSpec(vqgan=tiny_models.gumbel_name, clip=tiny_models.clip_name,
                                 model_dir=tiny_models.directory, device="cpu"))


@pytest.fixture(scope="module")
def cpu_models(tiny_models) -> Models:
    """f8 GumbelVQ and the tiny CLIP on the CPU: 32 px is 4x4 tokens."""
    return _load(tiny_models)


@pytest.fixture(scope="module")
def meta_models(tiny_models) -> Models:
    """The same models on the meta device: a device the host cannot read."""
    models = _load(tiny_models)
    return Models(vqgan=models.vqgan.to(META), perceptor=Perceptor(models.perceptor.model.to(META), META),
                  device=META, vqgan_name=models.vqgan_name, clip_name=models.clip_name)


def _source() -> Image.Image:
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    image.paste((20, 40, 220), (0, 0, 16, 32))
    return image


def _request(**kwargs: Any) -> GenerationRequest:
    defaults: dict[str, Any] = dict(prompts=parse_prompt("a red apple"), size=(32, 32), iterations=3, seed=1, cutn=4)
    defaults.update(kwargs)
    return GenerationRequest(**defaults)


# -- nothing in the loop waits for the device ----------------------------------------------

class LoopEnded(Exception):
    """Raised in place of `Generator.finish`, whose reads from the device are the result's."""


def _in_kornias_non_blocking_copy() -> bool:
    frame = sys._getframe()
    while frame is not None:
        code = frame.f_code
        if code.co_name in ("_to_device_nonblocking", "_as_tensor_nonblocking") and "kornia" in code.co_filename:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


class BlockingHostToDeviceCopies(TorchDispatchMode):
    """Records host -> device copies that block, while `recording` is set.

    Copies of tensors pass through this dispatch mode; `torch.tensor` and `torch.as_tensor`
    of Python data copy to the device without passing through it, so they are wrapped too.
    kornia 0.9 copies the parameters it draws on the host with `non_blocking=True` when the
    target is CUDA, and with a blocking copy on other devices, such as meta here; copies made
    in those helpers are therefore not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.recording = False
        self.copies: list[str] = []
        self._patched: list[tuple[str, Any]] = []

    def __enter__(self) -> BlockingHostToDeviceCopies:
        for name in ("tensor", "as_tensor"):
            original = getattr(torch, name)
            self._patched.append((name, original))
            setattr(torch, name, self._watch_new_tensor(name, original))
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        for name, original in self._patched:
            setattr(torch, name, original)

    def _watch_new_tensor(self, name: str, original: Any) -> Any:
        def new_tensor(data: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
            device = kwargs.get("device")
            if (self.recording and device is not None and torch.device(device).type != "cpu"
                    and not isinstance(data, torch.Tensor) and not _in_kornias_non_blocking_copy()):
                self.copies.append(f"torch.{name}")
            return original(data, *args, **kwargs)

        return new_tensor

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.recording and self._blocking_host_to_device(func, args, kwargs):
            self.copies.append(str(func))
        return func(*args, **kwargs)

    @staticmethod
    def _blocking_host_to_device(func, args, kwargs) -> bool:
        if func is torch.ops.aten._to_copy.default:
            source, target = args[0].device, kwargs.get("device") or args[0].device
            non_blocking = kwargs.get("non_blocking", False)
        elif func is torch.ops.aten.copy_.default:
            source, target = args[1].device, args[0].device
            non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
        else:
            return False
        host_to_device = source.type == "cpu" and target.type != "cpu"
        return host_to_device and not non_blocking and not _in_kornias_non_blocking_copy()


def _meta_mask(image: Image.Image, size: tuple[int, int], factor: int, device: torch.device) -> Mask:
    """A user mask made straight on the device. Making one reads it once (is it empty?),
    before the loop; here the loop alone is under test."""
    width, height = size
    return Mask(torch.ones(1, 1, height, width, device=device), torch.ones(1, 1, height // factor, width // factor,
                                                                          device=device))


LOOP_KINDS = {
    "generation with an image prompt": dict(image_prompts=[ImagePrompt(_source(), 0.5)]),
    "plain edit keeping structure": dict(init_image=_source(), keep_structure=0.5),
    "masked edit with the G.2 term": dict(init_image=_source(), mask_image=Image.new("L", (32, 32), 255)),
}


@pytest.mark.parametrize("kind", LOOP_KINDS.values(), ids=list(LOOP_KINDS))
def test_nothing_reads_the_device_or_waits_for_it_between_progress_points(
        meta_models: Models, monkeypatch: pytest.MonkeyPatch, kind: dict[str, Any]) -> None:
    """Every read from a meta tensor raises, so the loop reaching `finish` shows that nothing
    before it read the device; blocking host -> device copies after the first progress point
    are recorded (the first iteration may set things up)."""
    generator = Generator(meta_models)
    copies = BlockingHostToDeviceCopies()
    reports: list[int] = []

    def report(job: Any, on_progress: Any) -> None:  # reads nothing
        reports.append(job.iteration)
        copies.recording = True

    def finish(*args: Any) -> None:
        copies.recording = False
        raise LoopEnded

    monkeypatch.setattr(generator, "report", report)
    monkeypatch.setattr(generator, "finish", finish)
    monkeypatch.setattr(engine.generate, "mask_from_image", _meta_mask)
    with copies, pytest.raises(LoopEnded):
        generator.run(_request(iterations=4, progress_every=2, **kind), on_progress=lambda progress: None)
    assert reports == [2, 4]
    assert copies.copies == []


# -- which precision each part runs in ------------------------------------------------------

class FakeGPUs:
    """`torch.cuda.device` and `torch.cuda.is_bf16_supported` for two made-up GPUs: 0 runs
    bf16 only by emulation (a T4), 1 natively (an A100)."""

    NATIVE_BF16 = {0: False, 1: True}

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.current = 0
        gpus = self

        class device:
            def __init__(self, which: torch.device) -> None:
                self.index = torch.device(which).index

            def __enter__(self) -> None:
                self.previous, gpus.current = gpus.current, self.index

            def __exit__(self, *exc: object) -> None:
                gpus.current = self.previous

        def is_bf16_supported(including_emulation: bool = True) -> bool:
            return gpus.NATIVE_BF16[gpus.current] or including_emulation

        monkeypatch.setattr(torch.cuda, "device", device)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)


def _models_on(device: str, clip_dtype: torch.dtype = torch.float16) -> Any:
    return SimpleNamespace(device=torch.device(device), perceptor=SimpleNamespace(dtype=clip_dtype))


@pytest.mark.parametrize(("device", "decoder_dtype"), [("cuda:0", torch.float16), ("cuda:1", torch.bfloat16)])
def test_bf16_only_where_the_models_gpu_computes_it_natively(
        monkeypatch: pytest.MonkeyPatch, device: str, decoder_dtype: torch.dtype) -> None:
    """Emulated bf16 is slower than fp16; and the current GPU (0) is not the models' (1)."""
    FakeGPUs(monkeypatch)
    assert Numerics.for_models(_models_on(device)).decoder_dtype == decoder_dtype


@pytest.mark.parametrize(("device", "clip_dtype", "scaled"), [
    ("cuda:0", torch.float32, True),  # fp16 decoder
    ("cuda:1", torch.float16, True),  # bf16 decoder, fp16 CLIP (openai-clip's on CUDA)
    ("cuda:1", torch.float32, False),  # nothing in fp16
    ("cpu", torch.float32, False),
])
def test_the_loss_is_scaled_wherever_fp16_computes_gradients(
        monkeypatch: pytest.MonkeyPatch, device: str, clip_dtype: torch.dtype, scaled: bool) -> None:
    FakeGPUs(monkeypatch)
    assert Numerics.for_models(_models_on(device, clip_dtype)).scale_gradients is scaled


def _record_autocast(monkeypatch: pytest.MonkeyPatch, owner: object, name: str, seen: list[bool]) -> None:
    """Wrap `owner.name` to note, at each call, whether CPU autocast is on."""
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        seen.append(torch.is_autocast_enabled("cpu"))
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


def test_clip_runs_in_its_own_dtype_without_autocast(cpu_models: Models, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the decoder under bf16 autocast (CPU autocast stands in for CUDA's), CLIP, the
    text targets included, is never under it."""
    decoder: list[bool] = []
    clip: list[bool] = []
    _record_autocast(monkeypatch, cpu_models.vqgan, "decode", decoder)
    _record_autocast(monkeypatch, cpu_models.perceptor, "encode_image", clip)
    _record_autocast(monkeypatch, cpu_models.perceptor, "encode_text", clip)
    Generator(cpu_models, Numerics(torch.bfloat16)).run(_request(iterations=2))
    assert decoder[:2] == [True, True]
    assert clip and not any(clip)


def test_the_final_image_is_decoded_in_fp32(cpu_models: Models, monkeypatch: pytest.MonkeyPatch) -> None:
    decoder: list[bool] = []
    _record_autocast(monkeypatch, cpu_models.vqgan, "decode", decoder)
    Generator(cpu_models, Numerics(torch.bfloat16)).run(_request(iterations=2))
    assert decoder == [True, True, False]


def test_gradient_scaling_changes_neither_the_image_nor_the_reported_loss(cpu_models: Models) -> None:
    """The scaled loss is for the backward pass only: the step sees the unscaled gradient,
    and progress reports the unscaled loss."""

    def run(numerics: Numerics) -> tuple[bytes, list[float]]:
        losses: list[float] = []
        result = Generator(cpu_models, numerics).run(_request(iterations=3, progress_every=1),
                                                     on_progress=lambda progress: losses.append(progress.loss))
        return result.image.tobytes(), losses

    scaled_image, scaled_losses = run(Numerics(torch.float32, scale_gradients=True))
    plain_image, plain_losses = run(Numerics())
    assert scaled_image == plain_image
    assert scaled_losses == pytest.approx(plain_losses, rel=1e-6)
