"""Random cutouts of the image being optimised, augmented as the VQGAN-CLIP paper does.

CLIP judges many augmented crops instead of the one image: it sees a fixed input size, and
averaging its loss over crops of random size and position, flipped, warped, colour-jittered
and noised, gives a far less noisy gradient (and fewer adversarial textures) than one view.

Everything here works on the whole batch of cutouts at once:
- cropping is one `torchvision.ops.roi_align` call with one box per cutout. roi_align
  averages several samples per output pixel (`sampling_ratio=-1` adapts it to the box), so
  a large crop shrunk to CLIP's size is anti-aliased like the notebook's
  `adaptive_avg_pool2d`, without its Python loop; a bilinear `crop_and_resize` would alias.
- the augmentations are kornia modules applied to the batch (kornia draws per-sample
  parameters itself); the Gaussian noise is one tensor op.

Reproducibility without device syncs: kornia samples from torch's global RNG, which we
must not disturb (other code in the process uses it) and cannot hand a generator to. So each
call draws one seed from the caller's CPU `torch.Generator` and runs inside
`torch.random.fork_rng`, seeded with it: the same generator state gives the same cutouts,
and every RNG the call seeds is restored afterwards.

- kornia draws its parameters on the host (its default). kornia 0.9 copies them to the GPU
  without blocking, so the GPU never waits for the host; parameters drawn on the GPU would
  be copied back to the host by kornia's affine and perspective code, one blocking sync
  each, four per step.
- the boxes and the noise are drawn on the images' device, from that device's RNG (seeded
  for this call alone), so nothing crosses between host and device for them.

Only the CPU RNG and, for CUDA images, the images' own GPU's RNG are seeded, and exactly
those are restored (`torch.manual_seed` would reseed every GPU, and `fork_rng` restore only
the ones named).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _kornia_augmentations() -> nn.Sequential:
    import kornia.augmentation as K

    # The paper's set, with the notebook's strengths.
    return nn.Sequential(
        K.RandomHorizontalFlip(p=0.5),
        K.RandomAffine(degrees=30, translate=(0.1, 0.1), p=0.8, padding_mode="border"),
        K.RandomPerspective(distortion_scale=0.2, p=0.4),
        # A fixed order takes kornia's branch-free path (a random order syncs with the GPU).
        K.ColorJitter(brightness=0.0, contrast=0.0, saturation=0.01, hue=0.01, p=0.7, order=(0, 1, 2, 3)),
    )


class MakeCutouts(nn.Module):
    """`cutn` augmented random square crops of each input image, resized to `cut_size`.

    Crop sides are ``rand ** cut_pow * (max_size - min_size) + min_size`` with
    ``max_size = min(H, W)`` and ``min_size = min(H, W, cut_size)``: `cut_pow > 1` favours
    small crops (detail), `< 1` large ones (composition).
    """

    def __init__(
        self,
        cut_size: int,
        cutn: int,
        cut_pow: float = 1.0,
        noise_fac: float = 0.1,
        augment: bool = True,
    ) -> None:
        super().__init__()
        if cut_size < 1 or cutn < 1:
            raise ValueError("cut_size and cutn must be at least 1")
        self.cut_size = int(cut_size)
        self.cutn = int(cutn)
        self.cut_pow = float(cut_pow)
        self.noise_fac = float(noise_fac)
        self.augs: nn.Sequential | None = _kornia_augmentations() if augment else None

    def boxes(
        self,
        height: int,
        width: int,
        batch: int,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """(batch*cutn, 5) float32 roi_align boxes ``(image_index, x1, y1, x2, y2)`` on `device`.

        Drawn on the device itself (from `generator`, or that device's global RNG): a blocking
        host-to-device copy would stall the GPU every step.
        """
        n = batch * self.cutn
        max_size = float(min(height, width))
        min_size = float(min(height, width, self.cut_size))
        r = torch.rand(3, n, generator=generator, device=device)
        size = r[0].pow(self.cut_pow) * (max_size - min_size) + min_size
        x1 = r[1] * (width - size)
        y1 = r[2] * (height - size)
        # expand, not repeat_interleave: the output size is known without asking the device.
        index = torch.arange(batch, device=device, dtype=torch.float32)[:, None].expand(batch, self.cutn).reshape(n)
        return torch.stack([index, x1, y1, x1 + size, y1 + size], dim=1)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> (B*cutn, 3, cut_size, cut_size); differentiable in x.

        `generator` (a CPU generator) drives all randomness; without one, the global RNG does.
        """
        from torchvision.ops import roi_align

        if x.ndim != 4:
            raise ValueError(f"MakeCutouts wants (B, C, H, W), got {tuple(x.shape)}")
        batch, _, height, width = x.shape
        # A CPU generator: reading its draw is not a device sync.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        gpus = [_cuda_index(x.device)] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=gpus, device_type="cuda"):
            torch.default_generator.manual_seed(seed)  # kornia's parameters, drawn on the host
            for gpu in gpus:
                torch.cuda.default_generators[gpu].manual_seed(seed)  # boxes and noise
            boxes = self.boxes(height, width, batch, device=x.device).to(x.dtype)
            cutouts = roi_align(
                x, boxes, output_size=self.cut_size, spatial_scale=1.0, sampling_ratio=-1, aligned=True
            )
            if self.augs is not None:
                cutouts = self.augs(cutouts)
            if self.noise_fac:
                scale = torch.rand(cutouts.shape[0], 1, 1, 1, device=x.device, dtype=cutouts.dtype)
                noise = torch.randn(cutouts.shape, device=x.device, dtype=cutouts.dtype)
                cutouts = cutouts + scale * self.noise_fac * noise
        return cutouts


def _cuda_index(device: torch.device) -> int:
    """The GPU a CUDA tensor lives on (a tensor's device always has an index; be safe)."""
    return device.index if device.index is not None else torch.cuda.current_device()
