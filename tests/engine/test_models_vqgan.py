"""VQGAN: files written in taming's formats load back into the same model, and the
interface the generation loop relies on behaves (shapes, factor, codes, gradients)."""

from __future__ import annotations

import pytest
import torch

from engine.models.tiny import build_tiny_vqgan
from engine.models.vqgan import VQGAN, load_vqgan

KINDS = ["vq", "gumbel"]


def _files(tiny_models, kind: str):
    if kind == "vq":
        return tiny_models.vqgan_config, tiny_models.vqgan_checkpoint
    return tiny_models.gumbel_config, tiny_models.gumbel_checkpoint


@pytest.fixture(scope="module")
def loaded(tiny_models) -> dict[str, VQGAN]:
    return {kind: load_vqgan(*_files(tiny_models, kind), "cpu") for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_gives_the_same_model(loaded, kind: str) -> None:
    original = build_tiny_vqgan(kind, seed=0)  # what make_test_models(seed=0) wrote
    model = loaded[kind]
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model.encode(x), original.encode(x))
        z = original.random_z(2, 2, 2, torch.Generator().manual_seed(2))
        assert torch.equal(model.decode(model.quantize(z)), original.decode(original.quantize(z)))
    assert torch.equal(model.codebook, original.codebook)
    other = build_tiny_vqgan(kind, seed=1)
    assert not torch.equal(other.codebook, model.codebook)


@pytest.mark.parametrize("kind, factor, n_embed, embed_dim", [("vq", 16, 1024, 4), ("gumbel", 8, 1024, 8)])
def test_interface_shapes(loaded, kind: str, factor: int, n_embed: int, embed_dim: int) -> None:
    model = loaded[kind]
    assert (model.kind, model.factor, model.n_embed, model.embed_dim) == (kind, factor, n_embed, embed_dim)
    assert model.codebook.shape == (n_embed, embed_dim)
    x = torch.rand(1, 3, 64, 48) * 2 - 1
    with torch.no_grad():
        z = model.encode(x)
        assert z.shape == (1, embed_dim, 64 // factor, 48 // factor)
        z_q = model.quantize(z)
        assert z_q.shape == z.shape
        image = model.decode(z_q)
    assert image.shape == (1, 3, 64, 48)
    assert torch.isfinite(image).all()


@pytest.mark.parametrize("kind", KINDS)
def test_quantize_snaps_to_codebook_entries(loaded, kind: str) -> None:
    model = loaded[kind]
    z = torch.randn(2, model.embed_dim, 3, 4)
    z_q = model.quantize(z)
    vectors = z_q.movedim(1, -1).reshape(-1, model.embed_dim)
    codebook = model.codebook
    # every snapped vector is a codebook entry ...
    gaps = (vectors[:, None, :] - codebook[None]).abs().amax(dim=-1).min(dim=1).values
    assert gaps.max() < 1e-6
    # ... and the nearest one to where z was (exact squared distances, no cdist shortcuts)
    originals = z.movedim(1, -1).reshape(-1, model.embed_dim)
    nearest = (originals[:, None, :] - codebook[None]).square().sum(-1).argmin(dim=1)
    assert torch.allclose(vectors, codebook[nearest], atol=1e-6)


def test_gumbel_encode_returns_code_vectors(loaded) -> None:
    model = loaded["gumbel"]
    with torch.no_grad():
        z = model.encode(torch.rand(1, 3, 32, 32) * 2 - 1)
    assert torch.equal(model.quantize(z), z)  # already on codes: deterministic argmax codes


@pytest.mark.parametrize("kind", KINDS)
def test_straight_through_gradient_reaches_z(loaded, kind: str) -> None:
    model = loaded[kind]
    z = model.random_z(1, 2, 2, torch.Generator().manual_seed(0)).clone().requires_grad_(True)
    image = model.decode(model.quantize(z))
    image.square().mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_weights_frozen_and_eval(loaded, kind: str) -> None:
    model = loaded[kind]
    assert not any(p.requires_grad for p in model.parameters())
    model.train()
    assert not model.training and not any(m.training for m in model.modules())


def test_random_z_is_seeded_and_made_of_codes(loaded) -> None:
    model = loaded["vq"]
    a = model.random_z(2, 3, 5, torch.Generator().manual_seed(7))
    b = model.random_z(2, 3, 5, torch.Generator().manual_seed(7))
    c = model.random_z(2, 3, 5, torch.Generator().manual_seed(8))
    assert a.shape == (2, model.embed_dim, 3, 5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(model.quantize(a), a)


def test_loading_prints_nothing_on_stdout(tiny_models, capfd) -> None:
    # stdout is the worker's protocol channel; taming's Decoder prints when built.
    load_vqgan(tiny_models.vqgan_config, tiny_models.vqgan_checkpoint)
    assert capfd.readouterr().out == ""


def test_quantize_picks_the_same_codes_under_autocast(loaded) -> None:
    model = loaded["vq"]
    z = torch.randn(1, model.embed_dim, 4, 4, generator=torch.Generator().manual_seed(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        snapped = model.quantize(z)
    assert torch.equal(model.code_indices(snapped), model.code_indices(z))
    assert torch.equal(snapped.float(), model.quantize(z))
