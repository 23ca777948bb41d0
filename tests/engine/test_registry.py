"""The model registry: known checkpoints and resolving names to files in MODEL_DIR."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import EngineError, ModelFileError
from engine.registry import (
    DEFAULT_CLIP,
    DEFAULT_VQGAN,
    KNOWN_MODELS,
    ModelFile,
    clip_filename,
    default_model_dir,
    get_model,
    resolve_clip,
    resolve_vqgan,
)

REQUIRED_VQGAN = ("vqgan_imagenet_f16_16384", "vqgan_imagenet_f16_1024", "wikiart_16384",
                  "vqgan_gumbel_f8_8192")
REQUIRED_CLIP = ("ViT-B/32", "ViT-B/16")


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --- the registry itself ------------------------------------------------------------------


@pytest.mark.parametrize("name", REQUIRED_VQGAN)
def test_vqgan_entries_are_a_yaml_and_a_ckpt_named_after_the_model(name):
    model = KNOWN_MODELS[name]
    assert model.kind == "vqgan"
    assert [f.filename for f in model.files] == [f"{name}.yaml", f"{name}.ckpt"]
    assert all(f.url.startswith("https://") for f in model.files)


@pytest.mark.parametrize("name", REQUIRED_CLIP)
def test_clip_entries_use_openai_url_whose_path_is_the_checksum(name):
    model = KNOWN_MODELS[name]
    (file,) = model.files
    assert model.kind == "clip"
    assert file.filename == name.replace("/", "-") + ".pt"
    assert file.url.startswith("https://openaipublic.azureedge.net/clip/models/")
    assert file.url.split("/")[-2] == file.sha256
    assert file.url.endswith("/" + file.filename)


def test_defaults_are_known_models_of_the_right_kind():
    assert KNOWN_MODELS[DEFAULT_VQGAN].kind == "vqgan"
    assert KNOWN_MODELS[DEFAULT_CLIP].kind == "clip"


def test_default_vqgan_has_known_size_and_checksums():
    model = KNOWN_MODELS[DEFAULT_VQGAN]
    assert all(f.size and f.sha256 for f in model.files)
    assert model.size == sum(f.size for f in model.files)


def test_model_size_is_unknown_when_any_file_size_is():
    assert KNOWN_MODELS["vqgan_imagenet_f16_1024"].size is None


def test_clip_filename_replaces_slashes():
    assert clip_filename("ViT-B/32") == "ViT-B-32.pt"


@pytest.mark.parametrize("bad", ["", "..", "a/b.ckpt", "a\\b.ckpt"])
def test_model_file_rejects_names_that_leave_the_folder(bad):
    with pytest.raises(ValueError):
        ModelFile(bad, "https://example.invalid/x")


def test_model_file_rejects_malformed_checksum():
    with pytest.raises(ValueError):
        ModelFile("x.ckpt", "https://example.invalid/x", 1, "ABC")


def test_get_model_returns_entry():
    assert get_model("ViT-B/16") is KNOWN_MODELS["ViT-B/16"]


def test_get_model_unknown_lists_known_names():
    with pytest.raises(EngineError) as caught:
        get_model("nope")
    message = str(caught.value)
    assert "'nope'" in message
    assert all(name in message for name in REQUIRED_VQGAN + REQUIRED_CLIP)


def test_default_model_dir_comes_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    assert default_model_dir() == tmp_path


def test_default_model_dir_falls_back_to_models(monkeypatch):
    monkeypatch.delenv("MODEL_DIR", raising=False)
    assert default_model_dir() == Path("models")


# --- resolve_vqgan -----------------------------------------------------------------------


def test_resolve_vqgan_known_name_present(tmp_path):
    yaml = touch(tmp_path / f"{DEFAULT_VQGAN}.yaml")
    ckpt = touch(tmp_path / f"{DEFAULT_VQGAN}.ckpt")
    assert resolve_vqgan(DEFAULT_VQGAN, tmp_path) == (yaml.absolute(), ckpt.absolute())


def test_resolve_vqgan_missing_says_path_command_and_url(tmp_path):
    touch(tmp_path / f"{DEFAULT_VQGAN}.yaml")
    with pytest.raises(ModelFileError) as caught:
        resolve_vqgan(DEFAULT_VQGAN, tmp_path)
    message = str(caught.value)
    ckpt = KNOWN_MODELS[DEFAULT_VQGAN].files[1]
    assert str((tmp_path / ckpt.filename).absolute()) in message
    assert f"vqgan-clip download {DEFAULT_VQGAN}" in message
    assert ckpt.url in message
    assert f"{DEFAULT_VQGAN}.yaml" not in message.split("\n")[0]  # the present file is not blamed


def test_resolve_vqgan_custom_name_with_files_present(tmp_path):
    yaml = touch(tmp_path / "tiny_vqgan.yaml")
    ckpt = touch(tmp_path / "tiny_vqgan.ckpt")
    assert resolve_vqgan("tiny_vqgan", tmp_path) == (yaml.absolute(), ckpt.absolute())


def test_resolve_vqgan_unknown_missing_names_paths_and_known_models(tmp_path):
    with pytest.raises(ModelFileError) as caught:
        resolve_vqgan("tiny_vqgan", tmp_path)
    message = str(caught.value)
    assert str((tmp_path / "tiny_vqgan.yaml").absolute()) in message
    assert str((tmp_path / "tiny_vqgan.ckpt").absolute()) in message
    assert DEFAULT_VQGAN in message
    assert "vqgan-clip download" in message


def test_resolve_vqgan_explicit_paths_win_over_model_dir(tmp_path):
    yaml = touch(tmp_path / "elsewhere" / "config.yaml")
    ckpt = touch(tmp_path / "elsewhere" / "last.ckpt")
    assert resolve_vqgan(DEFAULT_VQGAN, tmp_path / "models", config=yaml, checkpoint=ckpt) == (
        yaml.absolute(),
        ckpt.absolute(),
    )


def test_resolve_vqgan_explicit_config_with_checkpoint_from_model_dir(tmp_path):
    yaml = touch(tmp_path / "custom.yaml")
    ckpt = touch(tmp_path / "models" / "tiny_vqgan.ckpt")
    assert resolve_vqgan("tiny_vqgan", tmp_path / "models", config=yaml) == (
        yaml.absolute(),
        ckpt.absolute(),
    )


def test_resolve_vqgan_explicit_missing_checkpoint_is_named(tmp_path):
    yaml = touch(tmp_path / "config.yaml")
    with pytest.raises(ModelFileError, match="nowhere.ckpt"):
        resolve_vqgan("anything", tmp_path, config=yaml, checkpoint=tmp_path / "nowhere.ckpt")


def test_resolve_vqgan_rejects_a_clip_name(tmp_path):
    with pytest.raises(ModelFileError, match="CLIP model"):
        resolve_vqgan("ViT-B/32", tmp_path)


@pytest.mark.parametrize("name", ["../outside", "a/b", ".hidden", ""])
def test_resolve_vqgan_rejects_names_that_are_paths(tmp_path, name):
    touch(tmp_path / "outside.yaml")
    touch(tmp_path / "outside.ckpt")
    with pytest.raises(ModelFileError, match="invalid VQGAN model name"):
        resolve_vqgan(name, tmp_path / "models")


# --- resolve_clip ------------------------------------------------------------------------


def test_resolve_clip_known_name_present(tmp_path):
    path = touch(tmp_path / "ViT-B-32.pt")
    assert resolve_clip("ViT-B/32", tmp_path) == path.absolute()


def test_resolve_clip_known_name_missing_says_path_command_and_url(tmp_path):
    with pytest.raises(ModelFileError) as caught:
        resolve_clip("ViT-B/16", tmp_path)
    message = str(caught.value)
    assert str((tmp_path / "ViT-B-16.pt").absolute()) in message
    assert "vqgan-clip download ViT-B/16" in message
    assert KNOWN_MODELS["ViT-B/16"].files[0].url in message


def test_resolve_clip_custom_name_present(tmp_path):
    path = touch(tmp_path / "tiny_clip.pt")
    assert resolve_clip("tiny_clip", tmp_path) == path.absolute()


def test_resolve_clip_file_name_in_model_dir(tmp_path):
    path = touch(tmp_path / "tiny_clip.pt")
    assert resolve_clip("tiny_clip.pt", tmp_path) == path.absolute()


def test_resolve_clip_explicit_pt_path(tmp_path):
    path = touch(tmp_path / "elsewhere" / "my clip.pt")
    assert resolve_clip(str(path), tmp_path / "models") == path.absolute()


def test_resolve_clip_missing_explicit_path_is_named(tmp_path):
    missing = tmp_path / "nowhere" / "x.pt"
    with pytest.raises(ModelFileError) as caught:
        resolve_clip(str(missing), tmp_path / "models")
    assert str(missing.absolute()) in str(caught.value)


def test_resolve_clip_missing_custom_name_says_where_and_lists_known(tmp_path):
    with pytest.raises(ModelFileError) as caught:
        resolve_clip("tiny_clip", tmp_path)
    message = str(caught.value)
    assert str((tmp_path / "tiny_clip.pt").absolute()) in message
    assert "ViT-B/32" in message


def test_resolve_clip_rejects_a_vqgan_name(tmp_path):
    with pytest.raises(ModelFileError, match="VQGAN model"):
        resolve_clip(DEFAULT_VQGAN, tmp_path)


def test_resolve_clip_unknown_slash_name_lists_known(tmp_path):
    with pytest.raises(ModelFileError, match="ViT-B/32"):
        resolve_clip("ViT-L/14", tmp_path)


def test_registry_imports_only_the_standard_library():
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import engine.registry\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "bad = sorted(new - set(sys.stdlib_module_names) - {'engine'})\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
