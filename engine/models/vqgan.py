"""VQGAN (taming-transformers' VQModel and GumbelVQ) without `taming.models`.

`taming.models.vqgan` cannot be imported here: it needs pytorch-lightning (which does not
fit this torch) and its loss builds LPIPS, which downloads VGG weights. We only need the
autoencoder, so we assemble it from taming's `Encoder`/`Decoder` plus our own quantisers
whose parameters carry taming's names and shapes; official checkpoints then load with
strict key checking once the training-only `loss.*` entries are dropped.

The generation loop sees one interface for both kinds (see docs/ARCHITECTURE.md):
`encode` -> `z` in embedding space, `quantize` (nearest code, straight-through gradient),
`decode`, plus `codebook`, `factor`, `n_embed`, `embed_dim`.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.errors import ModelFileError
from engine.models.checkpoint import download_hint, read_state_dict

__all__ = [
    "VQGAN",
    "VQGANConfig",
    "VectorQuantizer",
    "GumbelQuantize",
    "TamingAutoencoder",
    "read_vqgan_config",
    "read_config_dict",
    "load_vqgan",
    "check_state_dict",
    "VQMODEL_TARGET",
    "GUMBEL_TARGET",
]

log = logging.getLogger(__name__)

VQMODEL_TARGET = "taming.models.vqgan.VQModel"
GUMBEL_TARGET = "taming.models.vqgan.GumbelVQ"
Kind = Literal["vq", "gumbel"]
_KINDS: dict[str, Kind] = {VQMODEL_TARGET: "vq", GUMBEL_TARGET: "gumbel"}

# ddconfig keys taming's Encoder/Decoder need; the rest have defaults there.
_REQUIRED_DDCONFIG = ("ch", "out_ch", "ch_mult", "num_res_blocks", "attn_resolutions",
                      "in_channels", "resolution", "z_channels")


class VectorQuantizer(nn.Module):
    """taming's `VectorQuantizer` parameters (`embedding.weight`, (n_embed, embed_dim)).

    Only the parameters matter here: nearest-code lookup lives in `VQGAN.quantize` so both
    kinds share it.
    """

    def __init__(self, n_embed: int, embed_dim: int) -> None:
        super().__init__()
        self.n_e = n_embed
        self.e_dim = embed_dim
        self.embedding = nn.Embedding(n_embed, embed_dim)

    @property
    def codebook(self) -> Tensor:
        return self.embedding.weight


class GumbelQuantize(nn.Module):
    """taming's `GumbelQuantize` parameters: `proj` (z_channels -> n_embed logits, 1x1 conv)
    and `embed` (n_embed, embed_dim)."""

    def __init__(self, num_hiddens: int, embed_dim: int, n_embed: int) -> None:
        super().__init__()
        self.embedding_dim = embed_dim
        self.n_embed = n_embed
        self.proj = nn.Conv2d(num_hiddens, n_embed, 1)
        self.embed = nn.Embedding(n_embed, embed_dim)

    @property
    def codebook(self) -> Tensor:
        return self.embed.weight


class TamingAutoencoder(nn.Module):
    """The autoencoder part of taming's VQModel/GumbelVQ with its exact module names.

    Kept as its own module so that its `state_dict()` keys are byte-for-byte taming's
    (`encoder.*`, `decoder.*`, `quantize.*`, `quant_conv.*`, `post_quant_conv.*`), while the
    `VQGAN` wrapper is free to have a `quantize` *method*.
    """

    def __init__(self, kind: Kind, ddconfig: Mapping[str, Any], n_embed: int, embed_dim: int) -> None:
        super().__init__()
        # taming's modules print ("Working with z of shape ...") while building; stdout is the
        # worker's protocol channel, so keep it clean.
        from taming.modules.diffusionmodules.model import Decoder, Encoder

        with contextlib.redirect_stdout(io.StringIO()):
            self.encoder = Encoder(**ddconfig)
            self.decoder = Decoder(**ddconfig)
        z_channels = int(ddconfig["z_channels"])
        if kind == "vq":
            self.quantize: VectorQuantizer | GumbelQuantize = VectorQuantizer(n_embed, embed_dim)
        else:
            # As in taming's GumbelVQ: `proj` reads z_channels (== embed_dim in practice).
            self.quantize = GumbelQuantize(z_channels, embed_dim, n_embed)
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)


@dataclass(frozen=True)
class VQGANConfig:
    """What a taming yaml says about the autoencoder."""

    kind: Kind
    target: str
    ddconfig: dict[str, Any]
    n_embed: int
    embed_dim: int

    @property
    def factor(self) -> int:
        return 2 ** (len(self.ddconfig["ch_mult"]) - 1)


@torch.compiler.assume_constant_result
def _autocast_available(device_type: str) -> bool:
    """torch.amp.is_autocast_available, as a constant under torch.compile: torch 2.11's dynamo
    cannot trace torch._C._is_autocast_available and breaks the graph there."""
    return torch.amp.is_autocast_available(device_type)


class VQGAN(nn.Module):
    """A frozen VQGAN (VQModel or GumbelVQ) behind one interface.

    Weights never train here: all parameters have `requires_grad=False` and the module stays
    in eval mode; gradients flow only to the latent `z` the caller optimises.
    """

    def __init__(self, config: VQGANConfig) -> None:
        super().__init__()
        self.config = config
        self.kind: Kind = config.kind
        self.factor: int = config.factor
        self.n_embed: int = config.n_embed
        self.embed_dim: int = config.embed_dim
        self.autoencoder = TamingAutoencoder(config.kind, config.ddconfig, config.n_embed,
                                             config.embed_dim)

    # -- the interface -----------------------------------------------------------------
    @property
    def codebook(self) -> Tensor:
        """(n_embed, embed_dim): the code vectors `z` is snapped to."""
        return self.autoencoder.quantize.codebook

    @property
    def device(self) -> torch.device:
        return self.codebook.device

    @property
    def dtype(self) -> torch.dtype:
        return self.codebook.dtype

    def encode(self, x: Tensor) -> Tensor:
        """Image in [-1, 1], (B,3,H,W) -> z (B, embed_dim, H/factor, W/factor).

        VQModel: the pre-quantisation latent (encoder + quant_conv), as the VQGAN-CLIP
        notebook starts from. GumbelVQ: its latent lives in logit space, so we take the
        argmax code at each position and return those code vectors (deterministic, unlike
        taming's Gumbel sampling).
        """
        ae = self.autoencoder
        h = ae.quant_conv(ae.encoder(x))
        if self.kind == "vq":
            return h
        assert isinstance(ae.quantize, GumbelQuantize)
        logits = ae.quantize.proj(h)
        indices = logits.argmax(dim=1)  # (B, h, w)
        return self.embed_codes(indices)

    def code_indices(self, z: Tensor) -> Tensor:
        """(B, embed_dim, h, w) -> (B, h, w) index of the nearest code (squared L2).

        Always in float32 with autocast off: in half precision near-equal distances between
        16384 codes collapse and the argmin picks the wrong code.
        """
        # Devices autocast does not know (the meta device the sync tests run on) never autocast.
        no_autocast = (torch.autocast(device_type=z.device.type, enabled=False)
                       if _autocast_available(z.device.type) else contextlib.nullcontext())
        with no_autocast:
            codebook = self.codebook.float()
            flat = z.detach().float().movedim(1, -1).reshape(-1, self.embed_dim)
            distances = (
                flat.pow(2).sum(dim=1, keepdim=True)
                + codebook.pow(2).sum(dim=1)
                - 2.0 * flat @ codebook.T
            )
        batch, _, height, width = z.shape
        return distances.argmin(dim=1).view(batch, height, width)

    def embed_codes(self, indices: Tensor) -> Tensor:
        """(B, h, w) code indices -> (B, embed_dim, h, w) code vectors."""
        return F.embedding(indices, self.codebook).movedim(-1, 1).contiguous()

    def quantize(self, z: Tensor) -> Tensor:
        """Snap each position of `z` to its nearest code; the gradient passes straight to z.

        Forward value is the code vector; backward is the identity (z + (z_q - z).detach()),
        which is what lets Adam move z between codes.
        """
        z_q = self.embed_codes(self.code_indices(z)).to(z.dtype)
        return z + (z_q - z).detach()

    def decode(self, z_q: Tensor) -> Tensor:
        """(B, embed_dim, h, w) -> image (B, 3, h*factor, w*factor), roughly in [-1, 1]."""
        ae = self.autoencoder
        return ae.decoder(ae.post_quant_conv(z_q))

    def random_z(
        self,
        batch: int,
        height_tokens: int,
        width_tokens: int,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """z built from uniformly random codes (one-hot @ codebook), as the notebook starts.

        Indices are drawn on the generator's device (CPU when none), so a seed gives the
        same start on any device.
        """
        draw_device = generator.device if generator is not None else torch.device("cpu")
        indices = torch.randint(
            self.n_embed, (batch, height_tokens, width_tokens),
            generator=generator, device=draw_device,
        ).to(self.device)
        return self.embed_codes(indices)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction: encode, quantise, decode."""
        return self.decode(self.quantize(self.encode(x)))

    def train(self, mode: bool = True) -> "VQGAN":
        """Always eval: the weights are frozen and dropout must stay off."""
        return super().train(False)

    def freeze(self) -> "VQGAN":
        self.requires_grad_(False)
        self.eval()
        return self


# -- reading files ---------------------------------------------------------------------
def read_vqgan_config(path: Path) -> VQGANConfig:
    """Read a taming yaml (`model.target`, `model.params.{ddconfig,n_embed,embed_dim}`).

    Raises ModelFileError naming the file for anything missing, unreadable or unsupported.
    """
    from omegaconf import OmegaConf

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"VQGAN config {path} does not exist")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ModelFileError(
            f"VQGAN config {path} is not valid YAML ({type(error).__name__}: {detail[:200]}); "
            f"{download_hint(path)}"
        ) from None
    return read_config_dict(raw, source=str(path))


def read_config_dict(raw: Any, source: str) -> VQGANConfig:
    """Validate a taming config already parsed into plain dicts; `source` names it in errors."""
    try:
        model = raw["model"]
        target = str(model["target"])
        params = model["params"]
        ddconfig = dict(params["ddconfig"])
        n_embed = int(params["n_embed"])
        embed_dim = int(params["embed_dim"])
    except (KeyError, TypeError, ValueError) as error:
        raise ModelFileError(
            f"VQGAN config {source} is not a taming-transformers model config (missing or bad "
            f"{error}); it needs model.target and model.params.ddconfig/n_embed/embed_dim"
        ) from None
    kind = _KINDS.get(target)
    if kind is None:
        raise ModelFileError(
            f"VQGAN config {source} names model.target {target!r}; supported: "
            f"{VQMODEL_TARGET}, {GUMBEL_TARGET}"
        )
    missing = [k for k in _REQUIRED_DDCONFIG if k not in ddconfig]
    if missing:
        raise ModelFileError(f"VQGAN config {source}: ddconfig lacks {', '.join(missing)}")
    try:
        ddconfig["ch_mult"] = [int(m) for m in ddconfig["ch_mult"]]
        ddconfig["attn_resolutions"] = [int(r) for r in ddconfig["attn_resolutions"]]
    except (TypeError, ValueError):
        raise ModelFileError(
            f"VQGAN config {source}: ddconfig.ch_mult and attn_resolutions must be lists of "
            f"integers"
        ) from None
    if n_embed <= 0 or embed_dim <= 0 or not ddconfig["ch_mult"]:
        raise ModelFileError(
            f"VQGAN config {source}: n_embed, embed_dim and ch_mult must be non-empty/positive"
        )
    if kind == "gumbel" and int(ddconfig["z_channels"]) != embed_dim:
        raise ModelFileError(
            f"VQGAN config {source}: a GumbelVQ needs ddconfig.z_channels == embed_dim "
            f"(got {ddconfig['z_channels']} and {embed_dim})"
        )
    if isinstance(params, Mapping) and params.get("remap"):
        raise ModelFileError(
            f"VQGAN config {source}: code remapping (params.remap) is not supported"
        )
    return VQGANConfig(kind=kind, target=target, ddconfig=ddconfig, n_embed=n_embed,
                       embed_dim=embed_dim)


def check_state_dict(
    model: nn.Module, state: Mapping[str, Tensor], checkpoint: Path, config: Path
) -> None:
    """Raise ModelFileError unless `state` has exactly `model`'s keys and shapes.

    Done by hand rather than through `load_state_dict(strict=True)` so the message is short,
    names both files, and says which keys differ.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or mismatched):
        return

    def listing(items: list[str]) -> str:
        more = f" and {len(items) - 3} more" if len(items) > 3 else ""
        return ", ".join(items[:3]) + more

    parts = []
    if missing:
        parts.append(f"missing keys {listing(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {listing(unexpected)}")
    if mismatched:
        parts.append(f"shape mismatch (checkpoint vs config) {listing(mismatched)}")
    raise ModelFileError(
        f"checkpoint {checkpoint} does not match config {config}: {'; '.join(parts)}. "
        f"Are the .yaml and .ckpt from the same model?"
    )


def load_vqgan(config: Path, checkpoint: Path, device: torch.device | str = "cpu") -> VQGAN:
    """Build the VQGAN a taming yaml describes and fill it from a Lightning checkpoint.

    The model is built on the meta device and the checkpoint's tensors are assigned in, so
    loading costs no random initialisation and no second copy of the weights. Keys are
    checked strictly after dropping the training-only `loss.*` entries.
    """
    config, checkpoint = Path(config), Path(checkpoint)
    cfg = read_vqgan_config(config)
    state = read_state_dict(checkpoint)
    state = {k: v for k, v in state.items() if not k.startswith("loss.")}
    with torch.device("meta"):
        try:
            model = VQGAN(cfg)
        except Exception as error:
            raise ModelFileError(
                f"VQGAN config {config} describes a model taming cannot build "
                f"({type(error).__name__}: {error})"
            ) from None
    check_state_dict(model.autoencoder, state, checkpoint, config)
    try:
        model.autoencoder.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:  # pragma: no cover - check_state_dict catches these first
        raise ModelFileError(f"checkpoint {checkpoint} does not match config {config}: {error}") from None
    model.freeze()
    model.to(torch.device(device))
    return model
