"""Safe checkpoint reading: real Lightning-style files load; hostile or broken ones are
refused with a ModelFileError that names the file, and nothing in them runs."""

from __future__ import annotations

import os
import pickle
import shutil
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from engine.errors import ModelFileError
from engine.models.checkpoint import StandIn, read_state_dict, safe_torch_load
from engine.models.vqgan import load_vqgan


class _RunsShell:
    """Pickles as `posix.system("touch MARKER")`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _CreatesZip:
    """Pickles as `zipfile.ZipFile(MARKER, "w")`: a module not on any deny list, whose call
    would create a file. The loader must stand it in, not call it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (zipfile.ZipFile, (str(self.marker), "w"))


def _lightning_dict(payload: object) -> dict:
    return {
        "epoch": 1,
        "global_step": 10,
        "pytorch-lightning_version": "1.0.8",
        "state_dict": OrderedDict(weight=torch.zeros(2, 2)),
        "callbacks": {"payload": payload},
    }


def test_lightning_checkpoint_loads_with_foreign_classes_as_stand_ins(tiny_models) -> None:
    loaded = safe_torch_load(tiny_models.vqgan_checkpoint)
    assert loaded["pytorch-lightning_version"] == "1.0.8"
    (callback_class,) = loaded["callbacks"]
    # The pickle names pytorch_lightning's ModelCheckpoint, which is not installed here.
    assert issubclass(callback_class, StandIn)
    assert callback_class._qualified_name.endswith("ModelCheckpoint")
    assert isinstance(loaded["callbacks"][callback_class]["best_model_score"], StandIn)
    state = read_state_dict(tiny_models.vqgan_checkpoint)
    assert any(k.startswith("loss.") for k in state)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_plain_state_dict_file_is_its_own_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save({"a": torch.ones(3), "b": torch.zeros(1)}, path)
    state = read_state_dict(path)
    assert set(state) == {"a", "b"} and torch.equal(state["a"], torch.ones(3))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pickle_that_runs_a_shell_command_is_refused_without_running(
    tmp_path: Path, zip_format: bool
) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save(_lightning_dict(_RunsShell(marker)), path,
               _use_new_zipfile_serialization=zip_format)
    with pytest.raises(ModelFileError) as caught:
        read_state_dict(path)
    assert not marker.exists()
    message = str(caught.value)
    assert str(path) in message and "refusing" in message and "system" in message


def test_raw_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(_RunsShell(marker), protocol=2))
    with pytest.raises(ModelFileError, match="refusing"):
        read_state_dict(path)
    assert not marker.exists()


def test_unknown_callables_are_never_called(tmp_path: Path) -> None:
    marker = tmp_path / "created.zip"
    path = tmp_path / "sneaky.ckpt"
    payload = OrderedDict(weight=_CreatesZip(marker))
    torch.save({"state_dict": payload}, path)
    with pytest.raises(ModelFileError) as caught:
        read_state_dict(path)
    assert not marker.exists()
    assert str(path) in str(caught.value) and "not tensors" in str(caught.value)
    # Outside a state dict the same object is just an inert placeholder.
    torch.save(_lightning_dict(_CreatesZip(marker)), path)
    assert isinstance(safe_torch_load(path)["callbacks"]["payload"], StandIn)
    assert not marker.exists()


def test_truncated_checkpoint(tiny_models, tmp_path: Path) -> None:
    path = tmp_path / "tiny_vqgan.ckpt"
    data = tiny_models.vqgan_checkpoint.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError) as caught:
        read_state_dict(path)
    assert str(path) in str(caught.value) and "truncated or corrupt" in str(caught.value)


def test_empty_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "empty.ckpt"
    path.write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty") as caught:
        read_state_dict(path)
    assert str(path) in str(caught.value)


def test_garbage_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "garbage.ckpt"
    path.write_bytes(b"<html>404 not found</html>\n" * 50)
    with pytest.raises(ModelFileError, match="truncated or corrupt") as caught:
        read_state_dict(path)
    assert str(path) in str(caught.value)


def test_missing_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "nope.ckpt"
    with pytest.raises(ModelFileError, match="does not exist") as caught:
        read_state_dict(path)
    assert str(path) in str(caught.value)


def test_file_without_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.ones(1)], path)
    with pytest.raises(ModelFileError, match="not a model checkpoint") as caught:
        read_state_dict(path)
    assert str(path) in str(caught.value)


def test_checkpoint_from_another_model_does_not_match(tiny_models) -> None:
    with pytest.raises(ModelFileError) as caught:
        load_vqgan(tiny_models.vqgan_config, tiny_models.gumbel_checkpoint)
    message = str(caught.value)
    assert str(tiny_models.gumbel_checkpoint) in message
    assert str(tiny_models.vqgan_config) in message
    assert "missing keys" in message and "unexpected keys" in message


def test_checkpoint_of_another_size_does_not_match(tiny_models, tmp_path: Path) -> None:
    config = tmp_path / "bigger.yaml"
    config.write_text(tiny_models.vqgan_config.read_text().replace("n_embed: 1024", "n_embed: 2048"))
    with pytest.raises(ModelFileError, match="shape mismatch") as caught:
        load_vqgan(config, tiny_models.vqgan_checkpoint)
    assert "quantize.embedding.weight" in str(caught.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("model: [unclosed\n  - : :", "not valid YAML"),
        ("model:\n  target: taming.models.vqgan.VQModel\n", "not a taming-transformers"),
        ("model:\n  target: taming.models.cond_transformer.Net2NetTransformer\n"
         "  params: {ddconfig: {}, n_embed: 1, embed_dim: 1}\n", "supported"),
        ("", "not a taming-transformers"),
    ],
    ids=["bad-yaml", "no-params", "wrong-target", "empty"],
)
def test_broken_config(tiny_models, tmp_path: Path, text: str, expected: str) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text(text)
    with pytest.raises(ModelFileError, match=expected) as caught:
        load_vqgan(config, tiny_models.vqgan_checkpoint)
    assert str(config) in str(caught.value)


def test_missing_config(tiny_models, tmp_path: Path) -> None:
    config = tmp_path / "absent.yaml"
    with pytest.raises(ModelFileError, match="does not exist"):
        load_vqgan(config, tiny_models.vqgan_checkpoint)


def test_copy_of_good_checkpoint_still_loads(tiny_models, tmp_path: Path) -> None:
    # Sanity for the tests above: the corruption, not the copying, is what fails.
    path = tmp_path / "copy.ckpt"
    shutil.copy(tiny_models.vqgan_checkpoint, path)
    assert load_vqgan(tiny_models.vqgan_config, path).factor == 16
