"""Cutouts: shape, finiteness, gradient, reproducibility from a generator."""

from __future__ import annotations

import pytest
import torch

from engine.cutouts import MakeCutouts


@pytest.fixture(scope="module")
def cutouts() -> MakeCutouts:
    return MakeCutouts(cut_size=24, cutn=6)


def _image() -> torch.Tensor:
    return torch.rand(1, 3, 48, 40, generator=torch.Generator().manual_seed(0))


def test_output_shape_and_finite(cutouts: MakeCutouts) -> None:
    out = cutouts(_image(), torch.Generator().manual_seed(1))
    assert out.shape == (6, 3, 24, 24)
    assert torch.isfinite(out).all()


def test_batch_of_images_gives_cutn_cutouts_each(cutouts: MakeCutouts) -> None:
    out = cutouts(torch.rand(2, 3, 32, 32), torch.Generator().manual_seed(1))
    assert out.shape == (12, 3, 24, 24)


def test_gradient_flows_back_to_input(cutouts: MakeCutouts) -> None:
    x = _image().requires_grad_(True)
    cutouts(x, torch.Generator().manual_seed(1)).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_same_seed_identical_other_seed_different(cutouts: MakeCutouts) -> None:
    x = _image()
    a = cutouts(x, torch.Generator().manual_seed(7))
    b = cutouts(x, torch.Generator().manual_seed(7))
    c = cutouts(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_global_rng_left_untouched(cutouts: MakeCutouts) -> None:
    state = torch.get_rng_state()
    cutouts(_image(), torch.Generator().manual_seed(1))
    assert torch.equal(state, torch.get_rng_state())


def test_successive_calls_draw_new_cutouts(cutouts: MakeCutouts) -> None:
    generator = torch.Generator().manual_seed(3)
    x = _image()
    assert not torch.allclose(cutouts(x, generator), cutouts(x, generator))


def test_crop_sizes_follow_cut_pow() -> None:
    generator = torch.Generator().manual_seed(0)
    small = MakeCutouts(16, 200, cut_pow=4.0).boxes(64, 64, 1, generator)
    large = MakeCutouts(16, 200, cut_pow=0.25).boxes(64, 64, 1, generator)
    side = lambda boxes: (boxes[:, 3] - boxes[:, 1])  # noqa: E731
    assert side(small).min() >= 16 - 1e-4 and side(large).max() <= 64 + 1e-4
    assert side(small).mean() < side(large).mean() - 10
    assert (small[:, 1] >= 0).all() and (small[:, 3] <= 64 + 1e-4).all()


def test_without_augmentation_a_full_crop_is_the_resized_image() -> None:
    plain = MakeCutouts(cut_size=16, cutn=1, noise_fac=0.0, augment=False)
    x = torch.rand(1, 3, 16, 16)
    assert torch.allclose(plain(x, torch.Generator().manual_seed(0)), x, atol=1e-5)


def test_cutouts_of_an_image_on_a_device_never_read_it(cutouts: MakeCutouts) -> None:
    """kornia draws its parameters on the host: drawn on the images' device, its affine and
    perspective code would read them back, a sync with the GPU each. Any read from the meta
    device raises."""
    x = _image().to("meta")
    assert cutouts(x, torch.Generator().manual_seed(1)).shape == (6, 3, 24, 24)
    assert cutouts(x, torch.Generator().manual_seed(2)).device.type == "meta"


def test_the_host_rng_is_left_untouched_for_an_image_on_a_device(cutouts: MakeCutouts) -> None:
    state = torch.get_rng_state()
    cutouts(_image().to("meta"), torch.Generator().manual_seed(1))
    assert torch.equal(state, torch.get_rng_state())
