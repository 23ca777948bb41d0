"""CLIP: the openai-format file loads back into the same model (state dict and TorchScript
archives), and the Perceptor normalises, truncates and returns float32."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from engine.errors import ModelFileError
from engine.models.clip_model import CLIP_MEAN, CLIP_STD, Perceptor, load_clip
from engine.models.tiny import build_tiny_clip


@pytest.fixture(scope="module")
def perceptor(tiny_models) -> Perceptor:
    return load_clip(tiny_models.clip, "cpu")


@pytest.fixture(scope="module")
def original() -> torch.nn.Module:
    # What make_test_models(seed=0) wrote, as clip.load would leave it on the CPU.
    return build_tiny_clip(seed=0).float()


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def test_properties(perceptor: Perceptor) -> None:
    assert perceptor.input_resolution == 32
    assert perceptor.dtype == torch.float32  # CPU: float32
    assert perceptor.device == torch.device("cpu")
    assert perceptor.embed_dim == 32
    assert not any(p.requires_grad for p in perceptor.model.parameters())


def test_round_trip_same_outputs(perceptor: Perceptor, original: torch.nn.Module) -> None:
    import clip

    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    texts = ["a watercolor painting", "a baseball game"]
    with torch.no_grad():
        assert torch.equal(perceptor.encode_image(x), original.encode_image(_normalise(x)))
        expected_text = original.encode_text(clip.tokenize(texts, truncate=True))
    assert torch.equal(perceptor.encode_text(texts), expected_text)


def test_tiny_image_tower_tells_images_apart(perceptor: Perceptor) -> None:
    """What the generation tests rely on (see engine/models/tiny.py). Measured on these eight
    images: pairwise cosine mean 0.45 (-0.35..0.89), image-text cosines spread over 0.88 and
    0.66; at CLIP's default init the tiny tower gave mean 0.99 (0.975..0.998) and 0.11, 0.10."""
    import torch.nn.functional as F

    small = torch.rand(8, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    images = F.interpolate(small, size=32, mode="bilinear", align_corners=False)
    with torch.no_grad():
        embeds = F.normalize(perceptor.encode_image(images), dim=-1)
        texts = F.normalize(perceptor.encode_text(["a red apple", "a blue car"]), dim=-1)
    pairwise = (embeds @ embeds.T)[~torch.eye(8, dtype=torch.bool)]
    assert pairwise.mean() < 0.8, pairwise
    to_text = embeds @ texts.T  # (8 images, 2 texts)
    assert (to_text.max(dim=0).values - to_text.min(dim=0).values).min() > 0.4, to_text


def test_outputs_are_float32_and_image_keeps_gradient(perceptor: Perceptor) -> None:
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    image = perceptor.encode_image(x)
    assert image.dtype == torch.float32 and image.shape == (2, 32)
    image.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    text = perceptor.encode_text(["hello"])
    assert text.dtype == torch.float32 and text.shape == (1, 32) and not text.requires_grad


def test_long_text_is_truncated_not_refused(perceptor: Perceptor) -> None:
    assert perceptor.encode_text(["word " * 500]).shape == (1, 32)


def test_torchscript_archive_loads_like_the_state_dict(
    perceptor: Perceptor, original: torch.nn.Module, tmp_path: Path
) -> None:
    # Official CLIP files are TorchScript archives; those go through clip.load.
    import clip

    path = tmp_path / "ts_clip.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(
            original, (torch.rand(1, 3, 32, 32), clip.tokenize(["a"])), check_trace=False
        )
        torch.jit.save(traced, str(path))
    loaded = load_clip(path, "cpu")
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(loaded.encode_image(x), perceptor.encode_image(x), atol=1e-5)
    assert loaded.input_resolution == 32


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage", "not-clip", "missing"])
def test_bad_clip_file_names_the_file(tiny_models, tmp_path: Path, damage: str) -> None:
    path = tmp_path / "ViT-B-32.pt"
    if damage == "truncate":
        data = tiny_models.clip.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "garbage":
        path.write_bytes(b"\x00\x01garbage" * 100)
    elif damage == "not-clip":
        torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(ModelFileError) as caught:
        load_clip(path, "cpu")
    assert str(path) in str(caught.value)
