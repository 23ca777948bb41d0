"""ModelSpec -> Models through the registry, device choice, and `make-test-models`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.errors import EngineError, ModelFileError
from engine.models.loading import ModelSpec, Models, load_models, pick_device


def test_load_models_by_name(tiny_models) -> None:
    models = load_models(ModelSpec(vqgan="tiny_vqgan", clip="tiny_clip",
                                   model_dir=tiny_models.directory, device="cpu"))
    assert isinstance(models, Models)
    assert models.device == torch.device("cpu")
    assert (models.vqgan_name, models.clip_name) == ("tiny_vqgan", "tiny_clip")
    assert models.vqgan.factor == 16 and models.perceptor.input_resolution == 32


def test_load_models_with_explicit_vqgan_files(tiny_models, tmp_path: Path) -> None:
    models = load_models(ModelSpec(
        vqgan="my-gumbel", clip="tiny_clip", model_dir=tiny_models.directory, device="auto",
        vqgan_config=tiny_models.gumbel_config, vqgan_checkpoint=tiny_models.gumbel_checkpoint,
    ))
    assert models.vqgan.kind == "gumbel" and models.vqgan.factor == 8
    assert models.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_missing_model_is_a_model_file_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError):
        load_models(ModelSpec(vqgan="tiny_vqgan", clip="tiny_clip", model_dir=tmp_path,
                              device="cpu"))


def test_pick_device() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in ("cpu", "cuda")
    with pytest.raises(EngineError, match="unknown device"):
        pick_device("toaster")
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="no CUDA GPU"):
            pick_device("cuda")


def test_make_test_models_command(tmp_path: Path, capsys) -> None:
    from engine.cli import main

    target = tmp_path / "models"
    assert main(["make-test-models", str(target)]) == 0
    printed = capsys.readouterr().out.split()
    names = sorted(Path(p).name for p in printed)
    assert names == ["tiny_clip.pt", "tiny_gumbel.ckpt", "tiny_gumbel.yaml",
                     "tiny_vqgan.ckpt", "tiny_vqgan.yaml"]
    assert all(Path(p).is_file() for p in printed)
    # Registry resolution finds them by name.
    from engine.registry import resolve_clip, resolve_vqgan

    assert resolve_vqgan("tiny_gumbel", target)[1].name == "tiny_gumbel.ckpt"
    assert resolve_clip("tiny_clip", target).name == "tiny_clip.pt"


def test_command_module_does_not_import_torch_at_import_time() -> None:
    import subprocess
    import sys

    code = ("import sys, engine.commands.models as m; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
