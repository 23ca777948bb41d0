"""Masks for masked edits: which part of the image may change.

Two sources:
- `clip_mask`: the paper's appendix G.2 idea. Score windows of the image with CLIP against
  a source phrase ("flowers"), spread each window's score over its pixels, and keep the
  pixels that score clearly above the rest. No segmentation model is needed: CLIP already
  knows what flowers look like, just not where they are, and sliding windows recover
  "where" at the resolution of the window stride.
- `mask_from_image`: a mask the user painted (white, or opaque, means "change").

Both give a `Mask` at image resolution (soft, feathered: used to composite the result over
the source, so untouched areas stay pixel-identical) and at latent resolution (used to
gate z's gradient, so only the tokens under the mask move). A mask is never silently empty:
when the phrase matches nothing clearly, the whole image is used and `note` says so; an
empty user mask is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from engine.errors import InputImageError


@dataclass
class Mask:
    """A change mask. 1 = change, 0 = keep."""

    image: Tensor  # (1, 1, H, W) in [0, 1], feathered edges
    latent: Tensor  # (1, 1, H/f, W/f) in {0, 1}: tokens that may change
    note: str | None = None  # what the caller should tell the user (fallbacks, oddities)
    heatmap: Tensor | None = None  # (1, 1, H, W) normalised CLIP scores, for clip_mask

    @property
    def coverage(self) -> float:
        """Fraction of the image marked for change (one host sync)."""
        return float(self.image.mean())

    def to_pil(self) -> Image.Image:
        """The image-resolution mask as a greyscale PIL image (white = change)."""
        array = (self.image[0, 0].detach().float().clamp(0, 1) * 255).round().byte().cpu().numpy()
        return Image.fromarray(array, mode="L")


def _latent_mask(image_mask: Tensor, factor: int) -> Tensor:
    """A token may change when a noticeable part of its factor x factor patch is marked."""
    return (F.avg_pool2d(image_mask, factor) > 0.1).to(image_mask.dtype)


def _feather(binary: Tensor, radius: float) -> Tensor:
    """Dilate a 0/1 mask by `radius` pixels and blur its edge, staying within [0, 1]."""
    import kornia

    if radius < 1:
        return binary
    k = 2 * int(round(radius)) + 1
    dilated = kornia.morphology.dilation(binary, torch.ones(k, k, device=binary.device, dtype=binary.dtype))
    sigma = max(radius / 2, 0.5)
    ks = 2 * int(round(2 * sigma)) + 1
    return kornia.filters.gaussian_blur2d(dilated, (ks, ks), (sigma, sigma), border_type="replicate").clamp(0, 1)


def window_boxes(height: int, width: int, fractions: tuple[float, ...] = (1 / 2, 1 / 3, 1 / 4)) -> Tensor:
    """Square windows of side ``fraction * min(H, W)`` at half-window strides, covering the image.

    Several sizes so that both large and small objects find a window that frames them.
    Returns (N, 4) boxes ``(x1, y1, x2, y2)``.
    """
    boxes: list[tuple[float, float, float, float]] = []
    short = min(height, width)
    for fraction in fractions:
        side = max(1, int(round(short * fraction)))
        stride = max(1, side // 2)
        xs = list(range(0, max(width - side, 0) + 1, stride))
        ys = list(range(0, max(height - side, 0) + 1, stride))
        if xs[-1] != max(width - side, 0):
            xs.append(max(width - side, 0))
        if ys[-1] != max(height - side, 0):
            ys.append(max(height - side, 0))
        boxes += [(x, y, x + side, y + side) for y in ys for x in xs]
    return torch.tensor(sorted(set(boxes)), dtype=torch.float32)


@torch.no_grad()
def clip_mask(
    perceptor,
    image: Tensor,
    phrase: str,
    factor: int,
    *,
    fractions: tuple[float, ...] = (1 / 2, 1 / 3, 1 / 4),
    threshold_std: float = 0.5,
    min_spread: float = 1e-3,
    batch_size: int = 64,
) -> Mask:
    """Where in `image` ((1, 3, H, W) in [0, 1]) CLIP sees `phrase`, as a `Mask`.

    Each window's cosine similarity to the phrase is added to the pixels it covers and
    divided by how many windows cover each pixel; the heat map is normalised to [0, 1] and
    thresholded at ``mean + threshold_std * std``, then dilated and feathered by about a
    quarter of a token so the edit can blend in.

    Not the paper's threshold: appendix G.2 puts it "two standard deviations below the
    average weight". Whatever the heat map, at most a fifth of it can lie that far below its
    mean (Cantelli: P(X <= mean - 2 std) <= 1 / (1 + 2**2)), so that rule marks at least 80%
    of any image and cannot single out an object smaller than that, against the paper's own
    figure 18. On the red-square test image (the square is 10% of it) it marks all of it;
    ``mean + 0.5 std`` marks 22%, the square and its fringe. When the windows' scores barely differ
    (``max - min < min_spread``), CLIP has no opinion about where the phrase is: the whole
    image becomes the mask and `note` says so.
    """
    from torchvision.ops import roi_align

    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"clip_mask wants one image (1, 3, H, W), got {tuple(image.shape)}")
    _, _, height, width = image.shape
    device = image.device
    text = F.normalize(perceptor.encode_text([phrase]).float(), dim=-1)  # (1, D)

    boxes = window_boxes(height, width, fractions).to(device)
    rois = torch.cat([torch.zeros(len(boxes), 1, device=device), boxes], dim=1).to(image.dtype)
    resolution = int(perceptor.input_resolution)
    scores = []
    for start in range(0, len(rois), batch_size):
        crops = roi_align(image, rois[start : start + batch_size], resolution, 1.0, -1, True)
        embeds = F.normalize(perceptor.encode_image(crops).float(), dim=-1)
        scores.append(embeds @ text[0])
    score = torch.cat(scores)  # (N,)

    ys = torch.arange(height, device=device, dtype=torch.float32)
    xs = torch.arange(width, device=device, dtype=torch.float32)
    inside_y = ((ys[None] >= boxes[:, 1:2]) & (ys[None] < boxes[:, 3:4])).float()  # (N, H)
    inside_x = ((xs[None] >= boxes[:, 0:1]) & (xs[None] < boxes[:, 2:3])).float()  # (N, W)
    total = torch.einsum("nh,nw,n->hw", inside_y, inside_x, score - score.min())
    count = torch.einsum("nh,nw->hw", inside_y, inside_x).clamp_min(1.0)
    heat = total / count
    heat = (heat - heat.min()) / (heat.max() - heat.min()).clamp_min(1e-12)
    heat = heat[None, None]

    spread = float(score.max() - score.min())  # the one host sync, once per job
    full = torch.ones(1, 1, height, width, device=device)
    if spread < min_spread:
        return Mask(full, _latent_mask(full, factor),
                    note=f"could not find '{phrase}' clearly in the image; the whole image was edited",
                    heatmap=heat)
    binary = (heat > heat.mean() + threshold_std * heat.std()).float()
    feathered = _feather(binary, radius=factor / 4)
    latent = _latent_mask(feathered, factor)
    note = None
    if float(binary.mean()) > 0.9:
        note = f"'{phrase}' seems to fill most of the image; most of it was edited"
    return Mask(feathered, latent, note=note, heatmap=heat)


def mask_from_image(mask: Image.Image, size: tuple[int, int], factor: int, device: torch.device | str = "cpu") -> Mask:
    """A user-painted mask, scaled and centre-cropped like the init image to `size` (W, H).

    An image with transparency is read by its alpha (opaque = change); otherwise by its
    brightness (white = change). Raises `InputImageError` when nothing is marked.
    """
    from engine.images import fit_to_size

    if mask.mode in ("RGBA", "LA", "PA") or (mask.mode == "P" and "transparency" in mask.info):
        alpha = mask.convert("RGBA").getchannel("A")
        lowest, _ = cast(tuple[int, int], alpha.getextrema())  # one band: (min, max)
        grey = alpha if lowest < 255 else mask.convert("L")
    else:
        grey = mask.convert("L")
    grey = fit_to_size(grey, (size[0], size[1]))
    import numpy as np

    values = torch.from_numpy(np.asarray(grey, dtype=np.float32) / 255.0).to(device)[None, None]
    binary = (values >= 0.5).float()
    if float(binary.sum()) == 0:
        raise InputImageError(
            "the mask marks nothing to change: paint the area to change white (or opaque) on black"
        )
    feathered = _feather(binary, radius=factor / 4)
    note = "the mask covers the whole image" if float(binary.mean()) == 1.0 else None
    return Mask(feathered, _latent_mask(feathered, factor), note=note)
