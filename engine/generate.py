"""The VQGAN-CLIP optimisation loop (Crowson et al. 2022), as `Generator.run(request)`.

Nothing is trained. A latent `z` (VQGAN's pre-quantisation space) is optimised with Adam so
that CLIP finds the decoded image close to the targets. In the paper's terms:

- start (section 2): random codebook entries (generation) or the VQGAN encoding of the init
  image (edit); an edit differs from a generation only in where it starts;
- each step: quantise z with a straight-through gradient (2.1), decode, map to [0, 1] with a
  gradient-preserving clamp, cut `cutn` augmented cutouts (2.3), embed them with CLIP, and
  take the squared spherical distance of each cutout to each target (2.2), averaged over
  cutouts, times the target's weight (negative weights push away), summed over targets
  (prompt addition, G.1). The targets are the text prompts, the image prompts and, in masked
  edits, the original image (G.2);
- plus the weighted L2 penalty α·mean(z²) (2.4), α decayed over the run by `l2_decay`
  (`engine.method.l2_weight`), for generations and edits alike; and, opt-in for edits,
  `keep_structure`·mean((z - z0)²), which keeps the latent near the source's;
- masked edits (2.5, G.2) gate z's gradient with the latent mask and composite the decoded
  image over the source with the feathered mask;
- after each step z is clamped to the codebook's range (an edit's own start is always in
  range), so it cannot drift where the decoder has never been.

Reproducibility: one CPU `torch.Generator` seeded from `seed` drives the start codes and all
cutout randomness, so the same seed, inputs and device give the same PNG bytes on CPU, with
the same number of CPU threads (recorded in the PNG as `threads`).

Several jobs at once (issue 13): everything a job carries between iterations is its own
`JobState`, and `Generator.step` takes a list of them of one size, so the decoder and CLIP
run once for the whole batch while each job keeps its own draws, targets, loss and Adam
state. `run` is one job alone: `start`, `step([job])` until done, `finish`; a batch of one
computes exactly what this loop always computed, byte for byte. Which jobs share a step is
engine/batching.py's business.

Speed on a GPU (`Numerics`): the decoder runs under autocast in the loop (bf16 where the GPU
computes it natively, else fp16) and in channels_last; CLIP runs in its own dtype (fp16, as
openai-clip loads it); the loss is scaled wherever fp16 is in the backward pass. Nothing
reads from the device between progress points: `report` and `finish` are the only reads,
and all cutouts go through CLIP as one batch. The decode and CLIP forward can be compiled
(`compiler`, engine/compiling.py).
"""

from __future__ import annotations

import contextlib
import gc
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from engine import __version__
from engine.compiling import Compiler
from engine.cutouts import MakeCutouts
from engine.errors import Cancelled, InputImageError, OutOfMemoryError, PromptError
from engine.images import fit_to_size, png_bytes
from engine.limits import out_of_memory_advice
from engine.masking import Mask, clip_mask, mask_from_image
from engine.method import (
    G2_ORIGINAL_WEIGHT,
    KEEP_STRUCTURE,
    L2_ALPHA,
    L2_DECAY,
    L2_DECAYS,
    PAPER_BETAS,
    PAPER_ITERATIONS,
    PAPER_LR,
    L2Decay,
    l2_weight,
)
from engine.models.loading import Models
from engine.prompts import ImagePrompt, TextPrompt, format_prompts

__all__ = [
    "GenerationRequest",
    "GenerationResult",
    "Generator",
    "JobState",
    "Numerics",
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
    iterations: int = PAPER_ITERATIONS
    seed: int | None = None
    cutn: int = 32
    lr: float = PAPER_LR
    replace: str | None = None  # masked edit: the source phrase to find and change
    mask_image: Image.Image | None = None  # masked edit: user mask (white/opaque = change)
    progress_every: int = 10
    # Beyond the contract's fields; the numbers' sources are in engine.method:
    cut_pow: float = 1.0
    l2_weight: float = L2_ALPHA  # section 2.4's α in α·mean(z²), generations and edits alike
    l2_decay: L2Decay = L2_DECAY  # how α falls over the run: linear, step or inverse
    keep_structure: float = KEEP_STRUCTURE  # edits, opt-in: weight of mean((z - z0)²)
    original_weight: float = G2_ORIGINAL_WEIGHT  # masked edits: each cutout's distance to the original (G.2)
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
    """The finished image; `png` carries the prompt, seed, size, models and the method's
    settings as text chunks."""

    image: Image.Image
    png: bytes
    seed: int
    seconds: float
    iterations: int
    size: tuple[int, int] = (0, 0)  # (width, height) actually generated
    loss: float = math.nan  # loss at the last iteration
    mask: Image.Image | None = None  # masked edits: the mask used (white = changed)
    note: str | None = None  # something to tell the user (e.g. a mask fallback)


@dataclass(frozen=True)
class Numerics:
    """How the loop computes on its device.

    `decoder_dtype`: the decoder's autocast dtype inside the loop (float32: no autocast).
    `scale_gradients`: scale the loss for the backward pass (GradScaler), because fp16
    gradients underflow without it; bf16 has fp32's range and needs none.

    CLIP always runs in its own dtype, without autocast: under bf16 autocast its fp16
    weights were re-cast on every call, to less precision than they have. What is computed
    once per job (the source's encoding, the targets, the final image) is computed in fp32.
    """

    decoder_dtype: torch.dtype = torch.float32
    scale_gradients: bool = False

    @classmethod
    def for_models(cls, models: Models) -> Numerics:
        """CPU: fp32 throughout. CUDA: bf16 where the models' GPU computes it natively
        (compute capability 8.0 and up), else fp16; scaled wherever fp16 computes gradients,
        which with openai-clip's fp16 CLIP is every CUDA run.

        `is_bf16_supported()` counts emulated bf16 by default (a T4 or V100 would get bf16
        slower than fp16) and asks about the current device, which need not be the models'.
        """
        device = torch.device(models.device)
        if device.type != "cuda":
            return cls()
        with torch.cuda.device(device):
            native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        return cls.with_decoder(torch.bfloat16 if native_bf16 else torch.float16, models.perceptor.dtype)

    @classmethod
    def with_decoder(cls, decoder_dtype: torch.dtype, clip_dtype: torch.dtype) -> Numerics:
        """The decoder in `decoder_dtype`, the loss scaled if it or CLIP computes in fp16."""
        return cls(decoder_dtype, scale_gradients=torch.float16 in (decoder_dtype, clip_dtype))


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


@dataclass
class _Target:
    """CLIP embeddings every cutout is drawn towards (weight > 0) or pushed from (< 0)."""

    embeds: Tensor  # (K, D) unit vectors, fp32; a cutout's loss is its mean distance to the K
    weight: float


def _clip_loss(embeds: Tensor, targets: list[_Target]) -> Tensor:
    """Sections 2.2 and G.1: the weighted sum over targets of the squared spherical distance
    of the cutouts' embeddings (cutn, D) to the target's, averaged over both."""
    return torch.stack([
        target.weight * spherical_dist_loss(embeds[:, None], target.embeds[None]).mean()  # (cutn, K)
        for target in targets
    ]).sum()


def _composite(image: Tensor, blend: tuple[Tensor, Tensor] | None) -> Tensor:
    """Masked edits: the decoded image inside the mask, the source outside (`blend` is the
    feathered mask and the source already multiplied by its complement)."""
    if blend is None:
        return image
    inside, outside = blend
    return inside * image + outside


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
        (request.l2_decay in L2_DECAYS, f"l2_decay must be one of {', '.join(L2_DECAYS)}"),
        (math.isfinite(request.keep_structure) and request.keep_structure >= 0, "keep_structure must be 0 or more"),
        (math.isfinite(request.original_weight) and request.original_weight >= 0, "original_weight must be 0 or more"),
    ]
    for ok, message in checks:
        if not ok:
            raise PromptError(message)
    if request.keep_structure and request.init_image is None:
        raise PromptError("keep_structure keeps an edit near the image it edits: give an image to edit")
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


@dataclass(eq=False)
class JobState:
    """One job inside the loop: its request and everything the optimisation carries from one
    iteration to the next. `Generator.start` makes it; `Generator.step` advances it, alone
    or beside other jobs of the same size; `Generator.finish` turns it into the result.

    Nothing here is shared between jobs: each has its own random draws (`generator`), targets,
    latent, Adam state and loss scale, so a job's image does not depend on its companions.
    """

    request: GenerationRequest
    size: tuple[int, int]  # (width, height), rounded to the VQGAN's factor
    seed: int
    generator: torch.Generator  # the job's one source of randomness (CPU)
    cutouts: MakeCutouts
    targets: list[_Target]
    z: Tensor  # (1, C, h, w): the latent being optimised, a leaf
    z0: Tensor | None  # an edit's start
    z_range: tuple[Tensor, Tensor]  # per-channel bounds z is clamped to after each step
    blend: tuple[Tensor, Tensor] | None  # masked edits: see `_composite`
    mask: Mask | None
    optimizer: torch.optim.Adam
    scaler: torch.amp.GradScaler
    started: float  # time.monotonic() when the job started
    iteration: int = 0  # iterations done
    loss: Tensor | None = None  # the last iteration's loss
    image: Tensor | None = None  # the last iteration's image (1, 3, H, W), for previews

    @property
    def done(self) -> bool:
        return self.iteration >= self.request.iterations

    @property
    def progress_due(self) -> bool:
        """A progress point: every `progress_every` iterations and at the last one."""
        return self.iteration > 0 and (self.iteration % self.request.progress_every == 0 or self.done)


class Generator:
    """Runs generation requests on loaded models: `run` one job to its end, or `start`,
    `step` and `finish` jobs that share iterations (engine/batching.py).

    `numerics` defaults to `Numerics.for_models(models)`; tests and the benchmark pass
    another to try a precision the GPU would not be given by default. `compiler` compiles
    the loop's decode and CLIP forward (engine/compiling.py); off by default.
    """

    def __init__(self, models: Models, numerics: Numerics | None = None,
                 compiler: Compiler | None = None) -> None:
        self.models = models
        self.device = torch.device(models.device)
        self.numerics = numerics if numerics is not None else Numerics.for_models(models)
        if self.device.type == "cuda":
            models.vqgan.to(memory_format=torch.channels_last)
        self.compiler = compiler if compiler is not None else Compiler("off", self.device)
        # The loop's two heavy calls, compiled while the compiler is on.
        self._synth_in_loop = self.compiler.wrap(self._synth)
        self._embed_in_loop = self.compiler.wrap(self._embed)

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
        size = self.size_of(request)
        out_of_memory = False
        try:
            return self._run(request, on_progress, should_cancel)
        except torch.cuda.OutOfMemoryError:
            out_of_memory = True
        # Outside the except block, so the traceback's frames (and their tensors) are gone.
        self.free_memory()
        assert out_of_memory
        raise OutOfMemoryError(out_of_memory_advice(size, int(self.models.vqgan.factor)))

    def size_of(self, request: GenerationRequest) -> tuple[int, int]:
        """The (width, height) a request is generated at: its size rounded to the factor.
        Jobs of the same size can share iterations."""
        return round_size((request.size[0], request.size[1]), int(self.models.vqgan.factor))

    def free_memory(self) -> None:
        """Give cached device memory back after running out (the failed step's tensors must
        be gone: call it outside the except block)."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- the loop ----------------------------------------------------------------------
    def _run(
        self,
        request: GenerationRequest,
        on_progress: Callable[[Progress], None] | None,
        should_cancel: Callable[[], bool] | None,
    ) -> GenerationResult:
        job = self.start(request)
        while not job.done:
            if should_cancel is not None and should_cancel():
                raise Cancelled()
            self.step([job])
            if on_progress is not None and job.progress_due:
                self.report(job, on_progress)
        return self.finish(job)

    def start(self, request: GenerationRequest) -> JobState:
        """A job before its first iteration: its targets, and where z starts (section 2:
        random codes for a generation, the image's encoding for an edit; nothing else
        differs). Raises `PromptError`/`InputImageError` for a bad request."""
        _validate(request)
        started = time.monotonic()
        vqgan, device = self.models.vqgan, self.device
        factor = int(vqgan.factor)
        size = self.size_of(request)
        seed = int(request.seed if request.seed is not None else secrets.randbelow(2**31))
        generator = torch.Generator().manual_seed(seed)
        cutouts = MakeCutouts(self.models.perceptor.input_resolution, request.cutn, request.cut_pow)

        with torch.no_grad():
            targets = self._prompt_targets(request, size, cutouts, generator)
            source = (_to_tensor(fit_to_size(request.init_image.convert("RGB"), size), device)
                      if request.init_image is not None else None)  # (1, 3, H, W) in [0, 1]
            z0 = self._encode(source) if source is not None else None
            z = z0.clone() if z0 is not None else vqgan.random_z(
                1, size[1] // factor, size[0] // factor, generator=generator).float()
            mask = self._mask(request, source, size)
            blend: tuple[Tensor, Tensor] | None = None
            if mask is not None:
                assert source is not None, "a masked edit has an image to edit (_validate)"
                blend = (mask.image, (1 - mask.image) * source)
                targets += self._original_target(request, source, cutouts, generator)
        z.requires_grad_(True)
        if mask is not None:  # section 2.5: only the masked tokens may move
            latent_mask = mask.latent.to(z.dtype)
            z.register_hook(lambda grad: grad * latent_mask)
        # Fused Adam takes the scaler's inf check on the device; another optimizer would make
        # the scaler ask the host whether to step, a sync every iteration.
        optimizer = torch.optim.Adam([z], lr=request.lr, betas=PAPER_BETAS,
                                     fused=True if self.numerics.scale_gradients else None)
        scaler = torch.amp.GradScaler(device.type, enabled=self.numerics.scale_gradients)
        return JobState(request, size, seed, generator, cutouts, targets, z, z0, self._z_range(z0),
                        blend, mask, optimizer, scaler, started)

    def step(self, jobs: Sequence[JobState]) -> None:
        """One iteration for `jobs`, all of one size, as one batch: one decode of their
        latents and one CLIP forward of all their cutouts. All else is each job's own: its
        cutouts' random draws, its targets and loss terms, its Adam step. The batch's loss
        is the sum of the jobs' losses, so each z gets exactly its own job's gradient."""
        for job in jobs:
            job.optimizer.zero_grad(set_to_none=True)
        z = torch.cat([job.z for job in jobs])  # (B, C, h, w)
        images = [_composite(image, job.blend)  # B x (1, 3, H, W) in [0, 1]; section 2.1
                  for job, image in zip(jobs, self._synth_in_loop(z).split(1))]
        cutouts = torch.cat([job.cutouts(image, job.generator)  # (B*cutn, 3, R, R); section 2.3
                             for job, image in zip(jobs, images)])
        embeds = self._embed_in_loop(cutouts).split([job.cutouts.cutn for job in jobs])  # B x (cutn, D)
        losses = [self._loss(job, job_embeds) for job, job_embeds in zip(jobs, embeds)]
        torch.stack([job.scaler.scale(loss) for job, loss in zip(jobs, losses)]).sum().backward()
        for job, image, loss in zip(jobs, images, losses):
            job.scaler.step(job.optimizer)  # skipped, on the device, when a scaled gradient overflowed
            job.scaler.update()
            with torch.no_grad():
                z_min, z_max = job.z_range
                job.z.copy_(torch.maximum(torch.minimum(job.z, z_max), z_min))
            job.iteration += 1
            job.image, job.loss = image.detach(), loss.detach()

    def _loss(self, job: JobState, embeds: Tensor) -> Tensor:
        """A job's loss on its cutouts' embeddings (cutn, D): the distance to its targets
        (sections 2.2, G.1, G.2), plus α·mean(z²) decayed over its run (2.4), plus the
        opt-in pull of an edit towards its start."""
        request = job.request
        loss = _clip_loss(embeds, job.targets)
        loss = loss + l2_weight(request.l2_weight, request.l2_decay, job.iteration,
                                request.iterations) * job.z.pow(2).mean()
        if job.z0 is not None and request.keep_structure:  # opt-in, not the paper's
            loss = loss + request.keep_structure * (job.z - job.z0).pow(2).mean()
        return loss

    # -- the steps the loop calls ----------------------------------------------------------
    def _synth(self, z: Tensor, mixed_precision: bool = True) -> Tensor:
        """z -> image (1, 3, H, W) in [0, 1]: quantise with a straight-through gradient,
        decode (under `numerics.decoder_dtype` unless `mixed_precision` is off), clamp."""
        vqgan = self.models.vqgan
        z_q = vqgan.quantize(z)
        if self.device.type == "cuda":
            z_q = z_q.contiguous(memory_format=torch.channels_last)
        with self._decoder_autocast() if mixed_precision else contextlib.nullcontext():
            x = vqgan.decode(z_q)
        return ClampWithGrad.apply(x.float().add(1).div(2), 0.0, 1.0)

    def _decoder_autocast(self) -> ContextManager[object]:
        if self.numerics.decoder_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.numerics.decoder_dtype)

    def _embed(self, cutouts: Tensor) -> Tensor:
        """(N, 3, R, R) -> (N, D) unit fp32 embeddings; CLIP in its own dtype, no autocast."""
        return F.normalize(self.models.perceptor.encode_image(cutouts), dim=-1)

    def _encode(self, source: Tensor) -> Tensor:
        """An edit's start: the source's latent, in fp32 (once per job: precision over speed)."""
        vqgan = self.models.vqgan
        return vqgan.encode(source.mul(2).sub(1).to(vqgan.dtype)).float()

    def _z_range(self, z0: Tensor | None) -> tuple[Tensor, Tensor]:
        """Per-channel bounds z is clamped to: the codebook's range, widened to an edit's start."""
        codebook = self.models.vqgan.codebook.float()
        z_min = codebook.min(dim=0).values.view(1, -1, 1, 1)
        z_max = codebook.max(dim=0).values.view(1, -1, 1, 1)
        if z0 is not None:
            z_min, z_max = torch.minimum(z_min, z0), torch.maximum(z_max, z0)
        return z_min, z_max

    def _prompt_targets(self, request: GenerationRequest, size: tuple[int, int], cutouts: MakeCutouts,
                        generator: torch.Generator) -> list[_Target]:
        """The text prompts (one CLIP batch, fp32 targets) and the image prompts (seen through
        the same cutouts as the image, so both sides are views of the same kind)."""
        perceptor = self.models.perceptor
        targets: list[_Target] = []
        if request.prompts:
            texts = F.normalize(perceptor.encode_text([p.text for p in request.prompts]).float(), dim=-1)  # (P, D)
            targets += [_Target(texts[k:k + 1], float(p.weight)) for k, p in enumerate(request.prompts)]
        for prompt in request.image_prompts:
            picture = _to_tensor(fit_to_size(prompt.image.convert("RGB"), size), self.device)
            targets.append(_Target(self._embed(cutouts(picture, generator)), float(prompt.weight)))  # (cutn, D)
        return targets

    def _original_target(self, request: GenerationRequest, source: Tensor, cutouts: MakeCutouts,
                         generator: torch.Generator) -> list[_Target]:
        """Appendix G.2: "for every crop we compute the distance of the embedding of this crop
        to the embedding of the original image", weighted by `original_weight`.

        The original's embedding is taken as CLIP sees the image in the loop: the direction of
        the mean of its cutouts' embeddings. A single view of the whole image would sit away
        from where an unchanged image's cutouts land, so it would pull even an unchanged image.
        """
        if not request.original_weight:
            return []
        views = self._embed(cutouts(source, generator))  # (cutn, D)
        return [_Target(F.normalize(views.mean(dim=0, keepdim=True), dim=-1), request.original_weight)]

    def _mask(self, request: GenerationRequest, source: Tensor | None, size: tuple[int, int]) -> Mask | None:
        """Masked edits: CLIP's mask of the `replace` phrase, or the user's mask image."""
        factor = int(self.models.vqgan.factor)
        if request.replace is not None:
            assert source is not None, "a masked edit has an image to edit (_validate)"
            return clip_mask(self.models.perceptor, source, request.replace, factor)
        if request.mask_image is not None:
            return mask_from_image(request.mask_image, size, factor, self.device)
        return None

    def report(self, job: JobState, on_progress: Callable[[Progress], None]) -> None:
        """A progress point. With `finish`, the only place the loop reads from the device
        (the loss and a preview): between progress points the GPU never waits for the host."""
        assert job.loss is not None and job.image is not None, "report after a step"
        request = job.request
        on_progress(Progress(job.iteration, request.iterations, float(job.loss),
                             _preview(job.image, request.preview_size), time.monotonic() - job.started))

    def finish(self, job: JobState) -> GenerationResult:
        """The result: z decoded once more, in fp32 (the loop's autocast dtype buys speed; the
        image kept gets full precision)."""
        request, mask = job.request, job.mask
        with torch.no_grad():
            final = _composite(self._synth(job.z, mixed_precision=False), job.blend)
        image = _to_pil(final)
        metadata = self._metadata(request, job.size, job.seed, mask)
        return GenerationResult(
            image=image,
            png=png_bytes(image, metadata),
            seed=job.seed,
            seconds=time.monotonic() - job.started,
            iterations=request.iterations,
            size=job.size,
            loss=float(job.loss) if job.loss is not None else math.nan,
            mask=mask.to_pil() if mask is not None else None,
            note=mask.note if mask is not None else None,
        )

    def _metadata(self, request: GenerationRequest, size: tuple[int, int], seed: int, mask: Mask | None) -> dict[str, str]:
        """Everything needed to run the job again, as PNG text chunks."""
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
            "l2": f"{request.l2_weight:g}",
            "l2_decay": request.l2_decay,
            "mode": "edit" if request.init_image is not None else "generate",
            "software": f"vqgan-clip-bot {__version__}",
            "device": self.device.type,
        }
        if self.device.type == "cpu":
            # On the CPU the bytes depend on it: reductions split across threads round
            # differently. With it (`vqgan-clip --threads`) the same CPU remakes the same PNG.
            meta["threads"] = str(torch.get_num_threads())
        if request.init_image is not None:
            meta["keep_structure"] = f"{request.keep_structure:g}"
        if mask is not None:
            meta["original_weight"] = f"{request.original_weight:g}"
        if request.image_prompts:
            meta["image_prompts"] = ", ".join(f"{p.weight:g}" for p in request.image_prompts)
        if request.replace is not None:
            meta["replace"] = request.replace
        if request.mask_image is not None:
            meta["mask"] = "user mask"
        if mask is not None and mask.note:
            meta["note"] = mask.note
        return meta
