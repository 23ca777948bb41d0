"""Masks: user-painted masks, and CLIP-scored masks for `replace` edits."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from engine.errors import InputImageError
from engine.masking import clip_mask, mask_from_image, window_boxes


class RednessPerceptor:
    """A stand-in CLIP that 'sees' the phrase wherever the image is red.

    Lets the heat-map algorithm be tested on a known answer: the image embedding is
    (redness, 1 - redness) and every text embeds as (1, 0), so a window's cosine similarity
    to the text grows with the share of red pixels in it.
    """

    input_resolution = 16

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        red = ((x[:, 0] > 0.5) & (x[:, 1] < 0.5)).float().mean(dim=(1, 2))
        return torch.stack([red, 1 - red + 1e-3], dim=1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([[1.0, 0.0]]).repeat(len(texts), 1)


class BlindPerceptor(RednessPerceptor):
    """Sees nothing: every window scores the same."""

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones(x.shape[0], 2)


def _red_square_image(size: int = 64) -> torch.Tensor:
    image = torch.zeros(1, 3, size, size)
    image[:, 2] = 0.8  # blue background
    image[:, :, 40:60, 8:28] = torch.tensor([0.9, 0.1, 0.1]).view(1, 3, 1, 1)  # red square, lower left
    return image


def test_window_boxes_cover_every_pixel() -> None:
    boxes = window_boxes(48, 80)
    covered = torch.zeros(48, 80)
    for x1, y1, x2, y2 in boxes.int().tolist():
        assert 0 <= x1 < x2 <= 80 and 0 <= y1 < y2 <= 48
        covered[y1:y2, x1:x2] = 1
    assert covered.all()


def test_clip_mask_finds_the_phrase() -> None:
    mask = clip_mask(RednessPerceptor(), _red_square_image(), "a red square", factor=8)
    image = mask.image[0, 0]
    assert mask.note is None
    assert image[50, 18] > 0.9  # the square's centre
    assert image[10, 50] < 0.1  # the far corner
    assert image[40:60, 8:28].mean() > 3 * image.mean()


def test_clip_mask_latent_resolution_and_tokens() -> None:
    mask = clip_mask(RednessPerceptor(), _red_square_image(), "a red square", factor=8)
    assert mask.image.shape == (1, 1, 64, 64)
    assert mask.latent.shape == (1, 1, 8, 8)
    assert set(mask.latent.unique().tolist()) <= {0.0, 1.0}
    assert mask.latent[0, 0, 6, 2] == 1 and mask.latent[0, 0, 1, 6] == 0


def test_clip_mask_falls_back_to_whole_image_with_a_note() -> None:
    mask = clip_mask(BlindPerceptor(), _red_square_image(), "flowers", factor=8)
    assert mask.coverage == 1.0 and mask.latent.all()
    assert mask.note is not None and "flowers" in mask.note and "whole image" in mask.note


def test_clip_mask_with_tiny_clip_is_never_empty(tiny_models) -> None:
    from engine.models.clip_model import load_clip

    perceptor = load_clip(tiny_models.clip, "cpu")
    mask = clip_mask(perceptor, torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0)), "flowers", 8)
    assert mask.image.shape == (1, 1, 32, 48) and mask.latent.shape == (1, 1, 4, 6)
    assert mask.latent.sum() > 0 and mask.image.max() > 0.5


def test_mask_from_image_white_means_change() -> None:
    painted = Image.new("L", (64, 32), 0)
    painted.paste(255, (0, 0, 32, 32))
    mask = mask_from_image(painted, (64, 32), factor=8)
    assert mask.image.shape == (1, 1, 32, 64)
    assert mask.image[0, 0, 16, 5] == 1 and mask.image[0, 0, 16, 60] == 0
    assert mask.latent[0, 0].tolist() == [[1, 1, 1, 1, 1, 0, 0, 0]] * 4  # one token of feathering
    assert mask.note is None


def test_mask_from_image_reads_alpha_when_transparent() -> None:
    painted = Image.new("RGBA", (32, 32), (255, 255, 255, 0))  # white but transparent: keep
    painted.paste((0, 0, 0, 255), (16, 0, 32, 32))  # black but opaque: change
    mask = mask_from_image(painted, (32, 32), factor=8)
    assert mask.image[0, 0, 5, 2] == 0 and mask.image[0, 0, 5, 30] == 1


def test_mask_from_image_is_fitted_like_the_init_image() -> None:
    painted = Image.new("L", (128, 64), 0)
    painted.paste(255, (0, 0, 32, 64))  # the left quarter: cropped away by a square centre fit
    with pytest.raises(InputImageError, match="marks nothing"):
        mask_from_image(painted, (32, 32), factor=8)


def test_empty_user_mask_refused() -> None:
    with pytest.raises(InputImageError, match="paint the area to change white"):
        mask_from_image(Image.new("L", (16, 16), 0), (16, 16), factor=8)


def test_full_user_mask_noted() -> None:
    mask = mask_from_image(Image.new("L", (16, 16), 255), (16, 16), factor=8)
    assert mask.note == "the mask covers the whole image" and mask.latent.all()


def test_mask_to_pil() -> None:
    painted = Image.new("L", (16, 16), 0)
    painted.paste(255, (0, 0, 8, 16))
    pil = mask_from_image(painted, (16, 16), factor=8).to_pil()
    assert pil.mode == "L" and pil.size == (16, 16) and pil.getpixel((0, 0)) == 255 and pil.getpixel((15, 0)) == 0
