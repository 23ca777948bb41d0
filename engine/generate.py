"""The VQGAN-CLIP optimisation loop (Crowson et al. 2022), as `Generator.run(request)`.

Nothing is trained. A latent `z` (VQGAN's pre-quantisation space) is optimised with Adam so
that CLIP finds the decoded image close to the prompts:

- start: random codebook entries (generation) or the VQGAN encoding of the init image (edit);
- each step: quantise z with a straight-through gradient, decode, map to [0, 1] with a
  gradient-preserving clamp, cut `cutn` augmented cutouts, embed them with CLIP, and take the
  squared spherical distance to each prompt's embedding, averaged over cutouts, times the
  prompt's weight (negative weights push away), summed over prompts;
- plus the paper's weighted L2 penalty ``alpha * mean(z^2)``, decayed linearly to 0 over the
  run (early it keeps z near the codebook's typical scale so structure forms first; late it
  gets out of the way of detail). Edits penalise ``keep_structure * mean((z - z0)^2)``
  instead, which keeps the result near the source; masked edits gate z's gradient with the
  latent mask and composite the decoded image over the source with the feathered mask;
- after each step z is clamped to the codebook's range (an edit's own start is always in
  range), so it cannot drift where the decoder has never been.

Reproducibility: one CPU `torch.Generator` seeded from `seed` drives the start codes and all
cutout randomness, so the same seed, inputs and device give the same PNG bytes on CPU.

Speed on GPU: CLIP and the decoder run under autocast (bf16 where supported, else fp16),
the decoder in channels_last; nothing syncs with the host inside the loop except at
progress points (`loss.item()` and the preview), and all cutouts go through CLIP as one
batch.
"""

from __future__ import annotations

import contextlib
import gc
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from engine import __version__
from engine.cutouts import MakeCutouts
from engine.errors import Cancelled, InputImageError, OutOfMemoryError, PromptError
from engine.images import fit_to_size, png_bytes
from engine.limits import out_of_memory_advice
from engine.masking import Mask, clip_mask, mask_from_image
from engine.prompts import ImagePrompt, TextPrompt, format_prompts

__all__ = [
    "GenerationRequest",
    "GenerationResult",
    "Generator",
    "Progress",
    "ClampWithGrad",
    "round_size",
    "spherical_dist_loss",
]


@dataclass
class GenerationRequest:
    """One job. `size` is (width, height) and is rounded down to the VQGAN's factor."""

    prompts: list[TextPrompt]
    image_prompts: list[ImagePrompt] = field(default_factory=list)
    init_image: Image.Image | None = None  # editing when set
    size: tuple[int, int] = (512, 512)
    iterations: int = 400
    seed: int | None = None
    cutn: int = 32
    lr: float = 0.15
    replace: str | None = None  # masked edit: the source phrase to find and change
    mask_image: Image.Image | None = None  # masked edit: user mask (white/opaque = change)
    progress_every: int = 10
    # Beyond the contract's fields, with the paper's/notebook's defaults:
    cut_pow: float = 1.0
    l2_weight: float = 0.1  # alpha of the decayed L2 penalty on z (generation, masked area)
    keep_structure: float = 0.5  # edits: weight of mean((z - z0)^2)
    preview_size: int = 256  # longest side of Progress.preview


@dataclass
class Progress:
    """Reported every `progress_every` iterations and at the last one."""

    iteration: int  # 1-based: the iteration just finished
    total: int
    loss: float
    preview: Image.Image
    elapsed: float  # seconds since the run started


@dataclass
class GenerationResult:
    """The finished image; `png` carries the prompt, seed, size and models as text chunks."""

    image: Image.Image
    png: bytes
    seed: int
    seconds: float
    iterations: int
    size: tuple[int, int] = (0, 0)  # (width, height) actually generated
    loss: float = math.nan  # loss at the last iteration
    mask: Image.Image | None = None  # masked edits: the mask used (white = changed)
    note: str | None = None  # something to tell the user (e.g. a mask fallback)


class ClampWithGrad(torch.autograd.Function):
    """Clamp in the forward pass; in the backward pass let the gradient through wherever it
    points back into range (as in the VQGAN-CLIP notebook), so saturated pixels can recover
    instead of going dead as with a plain clamp."""

    @staticmethod
    def forward(ctx, x: Tensor, low: float, high: float) -> Tensor:
        ctx.low, ctx.high = low, high
        ctx.save_for_backward(x)
        return x.clamp(low, high)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        keep = grad * (x - x.clamp(ctx.low, ctx.high)) >= 0
        return grad * keep, None, None


def spherical_dist_loss(x: Tensor, y: Tensor) -> Tensor:
    """Squared great-circle distance between unit vectors (the paper's loss), broadcast.

    The clamp only guards arcsin against rounding just above 1 for opposite vectors.
    """
    return (x - y).norm(dim=-1).div(2).clamp(max=1.0).arcsin().pow(2).mul(2)


def round_size(size: tuple[int, int], factor: int) -> tuple[int, int]:
    """(width, height) rounded down to multiples of `factor`, never below one token."""
    width, height = (max(factor, int(v) // factor * factor) for v in size)
    return width, height


def _to_tensor(image: Image.Image, device: torch.device) -> Tensor:
    import numpy as np

    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous().to(device)


def _to_pil(x: Tensor) -> Image.Image:
    array = (x[0].detach().float().clamp(0, 1).permute(1, 2, 0) * 255).round().byte().cpu().numpy()
    return Image.fromarray(array, mode="RGB")


def _preview(x: Tensor, max_side: int) -> Image.Image:
    height, width = x.shape[-2:]
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        x = F.interpolate(x.detach().float(), size=size, mode="area")
    return _to_pil(x)


def _validate(request: GenerationRequest) -> None:
    if not request.prompts and not request.image_prompts:
        raise PromptError("give at least one text prompt or image prompt")
    for text_prompt in request.prompts:
        if not isinstance(text_prompt, TextPrompt) or not text_prompt.text.strip():
            raise PromptError("every text prompt needs text")
    weights = [p.weight for p in request.prompts] + [p.weight for p in request.image_prompts]
    if not all(math.isfinite(weight) for weight in weights):
        raise PromptError("prompt weights must be finite numbers")
    try:
        size_ok = len(request.size) == 2 and all(int(v) >= 1 for v in request.size)
    except (TypeError, ValueError):
        size_ok = False
    checks = [
        (isinstance(request.iterations, int) and request.iterations >= 1, "iterations must be at least 1"),
        (isinstance(request.cutn, int) and request.cutn >= 1, "cutn (the number of cutouts) must be at least 1"),
        (math.isfinite(request.lr) and request.lr > 0, "the learning rate must be a positive number"),
        (request.progress_every >= 1, "progress_every must be at least 1"),
        (size_ok, "the size must be two positive whole numbers (width, height)"),
        (math.isfinite(request.cut_pow) and request.cut_pow > 0, "cut_pow must be a positive number"),
        (math.isfinite(request.l2_weight) and request.l2_weight >= 0, "l2_weight must be 0 or more"),
        (math.isfinite(request.keep_structure) and request.keep_structure >= 0, "keep_structure must be 0 or more"),
    ]
    for ok, message in checks:
        if not ok:
            raise PromptError(message)
    if request.replace is not None and request.mask_image is not None:
        raise PromptError("give either a phrase to replace or a mask image, not both")
    if request.replace is not None and not request.replace.strip():
        raise PromptError("the phrase to replace is empty")
    if (request.replace is not None or request.mask_image is not None) and request.init_image is None:
        raise PromptError("a masked edit needs an image to edit")
    for name, image in (("init image", request.init_image), ("mask", request.mask_image)):
        if image is not None and not isinstance(image, Image.Image):
            raise InputImageError(f"the {name} is not an image; load it with engine.images.load_image")
    for image_prompt in request.image_prompts:
        if not isinstance(image_prompt.image, Image.Image):
            raise InputImageError("an image prompt is not an image; load it with engine.images.load_image")


class Generator:
    """Runs generation requests on loaded models. One job at a time per instance."""

    def __init__(self, models) -> None:  # models: engine.models.Models
        self.models = models
        self.device = torch.device(models.device)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            models.vqgan.to(memory_format=torch.channels_last)
        else:
            self.amp_dtype = torch.float32

    def _autocast(self):
        if self.cuda:
            return torch.autocast(device_type="cuda", dtype=self.amp_dtype)
        return contextlib.nullcontext()

    def run(
        self,
        request: GenerationRequest,
        on_progress: Callable[[Progress], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        """Optimise an image for `request`.

        Raises `Cancelled` within one iteration of `should_cancel()` turning true,
        `OutOfMemoryError` naming the size tried and a smaller one, `PromptError` and
        `InputImageError` for bad requests (before any work is done).
        """
        _validate(request)
        factor = int(self.models.vqgan.factor)
        size = round_size((request.size[0], request.size[1]), factor)
        seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
        out_of_memory = False
        try:
            return self._run(request, size, int(seed), on_progress, should_cancel)
        except torch.cuda.OutOfMemoryError:
            out_of_memory = True
        # Outside the except block, so the traceback's frames (and their tensors) are gone.
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
        assert out_of_memory
        raise OutOfMemoryError(out_of_memory_advice(size, factor))

    # -- the loop ----------------------------------------------------------------------
    def _synth(self, z: Tensor) -> Tensor:
        vqgan = self.models.vqgan
        z_q = vqgan.quantize(z)
        if self.cuda:
            z_q = z_q.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            x = vqgan.decode(z_q)
        return ClampWithGrad.apply(x.float().add(1).div(2), 0.0, 1.0)

    def _embed(self, cutouts: Tensor) -> Tensor:
        with self._autocast():
            embeds = self.models.perceptor.encode_image(cutouts)
        return F.normalize(embeds.float(), dim=-1)

    def _run(
        self,
        request: GenerationRequest,
        size: tuple[int, int],
        seed: int,
        on_progress: Callable[[Progress], None] | None,
        should_cancel: Callable[[], bool] | None,
    ) -> GenerationResult:
        start = time.monotonic()
        models, device = self.models, self.device
        vqgan, perceptor = models.vqgan, models.perceptor
        factor = int(vqgan.factor)
        width, height = size
        generator = torch.Generator().manual_seed(seed)
        cutouts = MakeCutouts(perceptor.input_resolution, request.cutn, request.cut_pow)

        # Targets: one CLIP batch for all texts; image prompts through the same cutouts.
        text_targets: tuple[Tensor, Tensor] | None = None  # (embeddings, weights)
        if request.prompts:
            with torch.no_grad(), self._autocast():
                text_embeds = F.normalize(perceptor.encode_text([p.text for p in request.prompts]).float(), dim=-1)
            text_targets = (text_embeds, torch.tensor([p.weight for p in request.prompts], device=device))
        image_targets: list[tuple[Tensor, float]] = []
        for prompt in request.image_prompts:
            with torch.no_grad():
                picture = _to_tensor(fit_to_size(prompt.image.convert("RGB"), size), device)
                image_targets.append((self._embed(cutouts(picture, generator)), float(prompt.weight)))

        # Start: the encoded init image, or random codes.
        source = z0 = None
        mask: Mask | None = None
        with torch.no_grad():
            if request.init_image is not None:
                source = _to_tensor(fit_to_size(request.init_image.convert("RGB"), size), device)
                with self._autocast():
                    z0 = vqgan.encode(source.mul(2).sub(1).to(vqgan.dtype)).float()
                z = z0.clone()
            else:
                z = vqgan.random_z(1, height // factor, width // factor, generator=generator).float()
            codebook = vqgan.codebook.float()
            z_min = codebook.min(dim=0).values.view(1, -1, 1, 1)
            z_max = codebook.max(dim=0).values.view(1, -1, 1, 1)
            if z0 is not None:
                z_min, z_max = torch.minimum(z_min, z0), torch.maximum(z_max, z0)
            if request.replace is not None:
                assert source is not None, "a masked edit has an image to edit (_validate)"
                with self._autocast():
                    mask = clip_mask(perceptor, source, request.replace, factor)
            elif request.mask_image is not None:
                mask = mask_from_image(request.mask_image, size, factor, device)
        z.requires_grad_(True)
        # Masked edits: the result is `inside * decoded + outside`, the source kept outside.
        blend: tuple[Tensor, Tensor] | None = None
        if mask is not None:
            assert source is not None, "a masked edit has an image to edit (_validate)"
            blend = (mask.image, (1 - mask.image) * source)
            latent_mask = mask.latent.to(z.dtype)
            z.register_hook(lambda grad: grad * latent_mask)
        optimizer = torch.optim.Adam([z], lr=request.lr, betas=(0.9, 0.999))

        total = request.iterations
        loss = torch.zeros((), device=device)
        for i in range(total):
            if should_cancel is not None and should_cancel():
                raise Cancelled()
            optimizer.zero_grad(set_to_none=True)
            out = self._synth(z)
            if blend is not None:
                out = blend[0] * out + blend[1]
            embeds = self._embed(cutouts(out, generator))
            loss = torch.zeros((), device=device)
            if text_targets is not None:
                text_embeds, text_weights = text_targets
                dists = spherical_dist_loss(embeds[:, None], text_embeds[None])  # (cutn, P)
                loss = loss + (dists.mean(dim=0) * text_weights).sum()
            for target, weight in image_targets:
                loss = loss + spherical_dist_loss(embeds[:, None], target[None]).mean() * weight
            decay = 1.0 - i / total
            if mask is not None:
                loss = loss + request.l2_weight * decay * (z.pow(2) * latent_mask).mean()
            elif z0 is not None:
                loss = loss + request.keep_structure * (z - z0).pow(2).mean()
            else:
                loss = loss + request.l2_weight * decay * z.pow(2).mean()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                z.copy_(torch.maximum(torch.minimum(z, z_max), z_min))
            iteration = i + 1
            if on_progress is not None and (iteration % request.progress_every == 0 or iteration == total):
                on_progress(Progress(iteration, total, float(loss.detach()), _preview(out, request.preview_size),
                                     time.monotonic() - start))

        with torch.no_grad():
            final = self._synth(z)
            if blend is not None:
                final = blend[0] * final + blend[1]
        image = _to_pil(final)
        seconds = time.monotonic() - start
        metadata = self._metadata(request, size, seed, mask)
        return GenerationResult(
            image=image,
            png=png_bytes(image, metadata),
            seed=seed,
            seconds=seconds,
            iterations=total,
            size=size,
            loss=float(loss.detach()),
            mask=mask.to_pil() if mask is not None else None,
            note=mask.note if mask is not None else None,
        )

    def _metadata(self, request: GenerationRequest, size: tuple[int, int], seed: int, mask: Mask | None) -> dict[str, str]:
        try:
            prompt = format_prompts(request.prompts) if request.prompts else ""
        except PromptError:
            prompt = " + ".join(f"{p.text}:{p.weight:g}" for p in request.prompts)
        meta = {
            "prompt": prompt,
            "seed": str(seed),
            "iterations": str(request.iterations),
            "size": f"{size[0]}x{size[1]}",
            "vqgan": str(self.models.vqgan_name),
            "clip": str(self.models.clip_name),
            "cutn": str(request.cutn),
            "lr": f"{request.lr:g}",
            "mode": "edit" if request.init_image is not None else "generate",
            "software": f"vqgan-clip-bot {__version__}",
        }
        if request.image_prompts:
            meta["image_prompts"] = ", ".join(f"{p.weight:g}" for p in request.image_prompts)
        if request.replace is not None:
            meta["replace"] = request.replace
        if request.mask_image is not None:
            meta["mask"] = "user mask"
        if mask is not None and mask.note:
            meta["note"] = mask.note
        return meta
