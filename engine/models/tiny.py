"""Tiny random models of the real architectures, written in the real file formats.

Tests and demos need a VQGAN and a CLIP that load through exactly the code the real ones do
(taming yaml + Lightning `.ckpt`; openai-format CLIP `.pt`) but take milliseconds on a CPU
and nothing from the network. So these are the real module classes with tiny widths:

* `tiny_vqgan`: a VQModel with the f16 shape (5 levels, factor 16), ch=32, and a dense
  codebook (1024 codes of dimension 4);
* `tiny_gumbel`: a GumbelVQ with the f8 shape (4 levels, factor 8) and 1024 codes of
  dimension 8;
* `tiny_clip`: a ViT CLIP with width 64 (one head), 32x32 input, patch 8, the real
  tokenizer's vocabulary (49408) and context length (77).

Random weights alone make a flat loss landscape, where the optimisation loop cannot be seen
to work: two choices keep the tiny models close enough to trained ones that it can.

* CLIP's image tower must tell images apart. At its default init the class token's
  constant (image-independent) part dwarfs what attention adds from the patches, so any two
  images embed at cosine ~0.99. The image tower's residual branches (attention `out_proj`,
  MLP `c_proj`) are scaled up (`_CLIP_VISUAL_GAIN`), so the patches dominate: random
  images then embed at cosine ~0.0-0.8 and image-text cosines spread over about [-0.5, 0.5].
* VQGAN's codes must be close together relative to an optimiser step, as in a trained
  codebook, so that moving z switches codes (the straight-through quantiser changes the
  decoded image only when a code switches). With 64 codes in 16 dimensions (VQModel) or 96
  in 32 (GumbelVQ) z rarely or never switched code in a short run, so the image stayed
  the start; 1024 codes in 4 or 8 dimensions switch several times as often.

The `.ckpt` files are written the way Lightning writes them: a dict with `state_dict`
(including training-only `loss.*` entries), `epoch`, `global_step`,
`pytorch-lightning_version`, optimizer states and callback states whose pickle names
`pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint` and numpy scalars, so the
safe loader meets the same foreign globals it meets in official checkpoints.
Weights are random but fixed by the seed.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import types
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

__all__ = [
    "TestModels",
    "make_test_models",
    "build_tiny_vqgan",
    "build_tiny_clip",
    "tiny_vqgan_config",
    "write_vqgan_files",
    "write_clip_file",
    "TINY_VQGAN",
    "TINY_GUMBEL",
    "TINY_CLIP",
]

TINY_VQGAN = "tiny_vqgan"
TINY_GUMBEL = "tiny_gumbel"
TINY_CLIP = "tiny_clip"  # the CLIP file is tiny_clip.pt: `resolve_clip("tiny_clip", dir)`


@dataclass(frozen=True)
class TestModels:
    """Where `make_test_models` wrote the files, and the names that resolve to them."""

    __test__ = False  # not a pytest test class, despite the name

    directory: Path
    vqgan_config: Path
    vqgan_checkpoint: Path
    gumbel_config: Path
    gumbel_checkpoint: Path
    clip: Path
    vqgan_name: str = TINY_VQGAN
    gumbel_name: str = TINY_GUMBEL
    clip_name: str = TINY_CLIP


# -- configs ---------------------------------------------------------------------------
def tiny_vqgan_config(kind: str = "vq") -> dict[str, Any]:
    """A taming-format config dict (what the yaml holds) for a tiny VQModel or GumbelVQ.

    Channel counts are multiples of 32 because taming's GroupNorm uses 32 groups.
    """
    if kind == "vq":
        ddconfig = {
            "double_z": False, "z_channels": 32, "resolution": 64, "in_channels": 3,
            "out_ch": 3, "ch": 32, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 1,
            "attn_resolutions": [4], "dropout": 0.0,
        }
        # embed_dim != z_channels on purpose: quant_conv must map between them.
        params: dict[str, Any] = {
            "embed_dim": 4, "n_embed": 1024, "monitor": "val/rec_loss", "ddconfig": ddconfig,
            "lossconfig": {
                "target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                "params": {"disc_conditional": False, "disc_in_channels": 3, "disc_start": 0,
                           "disc_weight": 0.75, "disc_num_layers": 2, "codebook_weight": 1.0},
            },
        }
        target = "taming.models.vqgan.VQModel"
    elif kind == "gumbel":
        ddconfig = {
            "double_z": False, "z_channels": 8, "resolution": 64, "in_channels": 3,
            "out_ch": 3, "ch": 32, "ch_mult": [1, 1, 2, 4], "num_res_blocks": 1,
            "attn_resolutions": [8], "dropout": 0.0,
        }
        # embed_dim == z_channels, as in taming's GumbelVQ configs (`proj` reads z_channels).
        params = {
            "kl_weight": 1.0e-08, "embed_dim": 8, "n_embed": 1024, "monitor": "val/rec_loss",
            "temperature_scheduler_config": {
                "target": "taming.lr_scheduler.LambdaWarmUpCosineScheduler",
                "params": {"warm_up_steps": 0, "max_decay_steps": 1000001, "lr_start": 0.9,
                           "lr_max": 0.9, "lr_min": 1.0e-06},
            },
            "ddconfig": ddconfig,
            "lossconfig": {"target": "taming.modules.losses.vqperceptual.DummyLoss"},
        }
        target = "taming.models.vqgan.GumbelVQ"
    else:
        raise ValueError(f"kind must be 'vq' or 'gumbel', not {kind!r}")
    return {"model": {"base_learning_rate": 4.5e-06, "target": target, "params": params}}


def build_tiny_vqgan(kind: str = "vq", seed: int = 0):  # -> engine.models.vqgan.VQGAN
    """A tiny VQGAN with seeded random weights (codebook ~ N(0, 1): 1024 codes in 4 or 8
    dimensions, close together for an optimiser step of ~0.1-0.3)."""
    from engine.models.vqgan import VQGAN, read_config_dict

    config = read_config_dict(tiny_vqgan_config(kind), source=f"tiny {kind}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VQGAN(config)
        with torch.no_grad():
            model.codebook.normal_(0.0, 1.0)
    return model.freeze()


# Gains on the image tower's residual branches (see the module docstring): without them the
# class token's constant part dominates and every image embeds at cosine ~0.99.
_CLIP_VISUAL_GAIN = {"attn.out_proj.weight": 20.0, "mlp.c_proj.weight": 10.0}


def build_tiny_clip(seed: int = 0) -> torch.nn.Module:
    """A tiny ViT CLIP (clip.model.CLIP) in openai's mixed precision layout, seeded, whose
    image tower tells images apart (its residual branches scaled by `_CLIP_VISUAL_GAIN`)."""
    from engine.models.clip_model import import_clip

    clip_model = import_clip().model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = clip_model.CLIP(
            embed_dim=32,
            image_resolution=32, vision_layers=1, vision_width=64, vision_patch_size=8,
            context_length=77, vocab_size=49408,
            transformer_width=64, transformer_heads=1, transformer_layers=1,
        )
    with torch.no_grad():
        for name, parameter in model.visual.transformer.resblocks.named_parameters():
            gain = _CLIP_VISUAL_GAIN.get(name.split(".", 1)[1])
            if gain is not None:
                parameter.mul_(gain)
    clip_model.convert_weights(model)  # official CLIP files hold fp16 linear/conv weights
    return model.eval()


# -- writing files ---------------------------------------------------------------------
class _ModelCheckpoint:
    """Written into the pickle as `pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint`
    (Lightning keys callback states by the callback class)."""


_PICKLE_ALIASES: dict[Any, tuple[str, str]] = {
    _ModelCheckpoint: ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"),
}


class _AliasingPickler(pickle._Pickler):
    """Pickler that writes a few of our classes under Lightning's names.

    The stock pickler refuses to name a module that is not importable, and Lightning is not
    installed here; we want the file to name it anyway, as official checkpoints do.
    """

    # The pure-Python pickler's internals, which typeshed leaves out of its stub.
    write: Callable[[bytes], Any]
    memoize: Callable[[Any], None]

    def save_global(self, obj: Any, name: str | None = None) -> None:  # noqa: D102
        alias = _PICKLE_ALIASES.get(obj) if isinstance(obj, type) else None
        if alias is None:
            # save_global is also an internal typeshed leaves out.
            return super().save_global(obj, name)  # type: ignore[misc]
        module, qualname = alias
        self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode("utf-8"))
        self.memoize(obj)
        return None


_lightning_pickle = types.ModuleType("engine_lightning_pickle")
vars(_lightning_pickle).update(Pickler=_AliasingPickler)
_lightning_pickle.__name__ = "engine_lightning_pickle"


def lightning_checkpoint(state_dict: dict[str, torch.Tensor], seed: int = 0) -> dict[str, Any]:
    """Wrap a state dict the way PyTorch Lightning 1.x saves a checkpoint."""
    import numpy as np

    generator = torch.Generator().manual_seed(seed + 1)
    full = OrderedDict(state_dict)
    # Training-only entries official checkpoints carry (discriminator, LPIPS scale).
    full["loss.logvar"] = torch.zeros(())
    full["loss.discriminator.main.0.weight"] = torch.randn(8, 3, 4, 4, generator=generator)
    full["loss.discriminator.main.0.bias"] = torch.zeros(8)
    return {
        "epoch": 3,
        "global_step": 1234,
        "pytorch-lightning_version": "1.0.8",
        "callbacks": {
            _ModelCheckpoint: {
                "monitor": "val/rec_loss",
                "best_model_score": np.float64(0.25),
                "best_model_path": "logs/checkpoints/last.ckpt",
            }
        },
        "optimizer_states": [
            {"state": {}, "param_groups": [{"lr": 4.5e-06, "betas": (0.5, 0.9), "eps": 1e-08,
                                            "weight_decay": 0, "amsgrad": False, "params": [0]}]},
        ],
        "lr_schedulers": [],
        "state_dict": full,
    }


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """Write to a temporary name and rename into place, so an interrupted run never leaves
    a half-written model file under a name the loaders would pick up."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_vqgan_files(directory: Path, name: str, kind: str, seed: int = 0) -> tuple[Path, Path]:
    """Write `name.yaml` + `name.ckpt` for a tiny VQGAN of `kind`; returns their paths."""
    from omegaconf import OmegaConf

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / f"{name}.yaml"
    checkpoint_path = directory / f"{name}.ckpt"
    with _atomic(config_path) as partial:
        OmegaConf.save(OmegaConf.create(tiny_vqgan_config(kind)), partial)
    model = build_tiny_vqgan(kind, seed)
    state = model.autoencoder.state_dict()
    with _atomic(checkpoint_path) as partial:
        torch.save(lightning_checkpoint(state, seed), partial,
                   pickle_module=_lightning_pickle, pickle_protocol=2)
    return config_path, checkpoint_path


def write_clip_file(path: Path, seed: int = 0) -> Path:
    """Write a tiny CLIP as an openai-format state dict (what `clip.load` reads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _atomic(path) as partial:
        torch.save(build_tiny_clip(seed).state_dict(), partial)
    return path


def make_test_models(directory: Path, seed: int = 0) -> TestModels:
    """Write the tiny VQModel, GumbelVQ and CLIP into `directory` (created if needed).

    The names are registry-style, so `resolve_vqgan("tiny_vqgan", directory)` and
    `resolve_clip("tiny_clip", directory)` find them.
    """
    directory = Path(directory)
    vq_yaml, vq_ckpt = write_vqgan_files(directory, TINY_VQGAN, "vq", seed)
    gumbel_yaml, gumbel_ckpt = write_vqgan_files(directory, TINY_GUMBEL, "gumbel", seed)
    clip_path = write_clip_file(directory / f"{TINY_CLIP}.pt", seed)
    return TestModels(
        directory=directory,
        vqgan_config=vq_yaml, vqgan_checkpoint=vq_ckpt,
        gumbel_config=gumbel_yaml, gumbel_checkpoint=gumbel_ckpt,
        clip=clip_path,
    )
