"""`vqgan-clip imagine` / `edit` end to end on the tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from engine.cli import main
from engine.images import png_metadata


def _tiny_args(tiny_models) -> list[str]:
    return ["--vqgan", tiny_models.gumbel_name, "--clip", tiny_models.clip_name,
            "--model-dir", str(tiny_models.directory), "--device", "cpu", "--cutn", "4", "--no-progress"]


def test_imagine_writes_png_with_metadata_frames_and_timelapse(tiny_models, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out" / "forest.png"
    code = main(["imagine", "a forest rendered in low poly", "-o", str(out), "--size", "32x24",
                 "--iterations", "4", "--seed", "5", "--save-every", "2",
                 "--timelapse", str(tmp_path / "forest.webp"), *_tiny_args(tiny_models)])
    assert code == 0
    meta = png_metadata(out.read_bytes())
    assert meta["prompt"] == "a forest rendered in low poly" and meta["seed"] == "5"
    assert meta["size"] == "32x24" and meta["vqgan"] == tiny_models.gumbel_name
    assert sorted(p.name for p in out.parent.glob("forest_*.png")) == ["forest_0002.png", "forest_0004.png"]
    with Image.open(tmp_path / "forest.webp") as animation:
        assert animation.format == "WEBP" and animation.size == (32, 24)
    printed = capsys.readouterr().out
    assert str(out) in printed and "seed 5" in printed


def test_edit_with_mask_and_image_prompt(tiny_models, tmp_path: Path, capsys) -> None:
    photo, mask, hint = tmp_path / "photo.jpg", tmp_path / "mask.png", tmp_path / "hint.png"
    Image.new("RGB", (64, 32), (30, 120, 40)).save(photo)
    painted = Image.new("L", (64, 32), 0)
    painted.paste(255, (0, 0, 32, 32))
    painted.save(mask)
    Image.new("RGB", (16, 16), (200, 200, 0)).save(hint)
    out = tmp_path / "edited.png"
    code = main(["edit", str(photo), "withered flowers", "--mask", str(mask), "-o", str(out),
                 "--size", "32x16", "--iterations", "2", "--image-prompt", f"{hint}:0.5",
                 "--timelapse", str(tmp_path / "edit.gif"), *_tiny_args(tiny_models)])
    assert code == 0
    meta = png_metadata(out.read_bytes())
    assert meta["mode"] == "edit" and meta["mask"] == "user mask" and meta["image_prompts"] == "0.5"
    with Image.open(tmp_path / "edit.gif") as animation:
        assert animation.format == "GIF"
    assert "seed" in capsys.readouterr().out


def test_edit_replace_runs_from_the_command_line(tiny_models, tmp_path: Path, capsys) -> None:
    photo = tmp_path / "wide.png"
    Image.new("RGB", (80, 40), (90, 90, 200)).save(photo)
    out = tmp_path / "wide_edit.png"
    assert main(["edit", str(photo), "a sunset", "--replace", "sky", "-o", str(out), "--iterations", "1",
                 "--size", "32x16", *_tiny_args(tiny_models)]) == 0
    assert png_metadata(out.read_bytes())["replace"] == "sky"


def test_edit_size_defaults_to_the_image_aspect() -> None:
    from engine.commands.generate import _edit_size

    assert _edit_size((80, 40)) == (512, 256)
    assert _edit_size((300, 1200)) == (128, 512)


def test_timelapse_holds_every_frame(tmp_path: Path) -> None:
    from engine.commands.generate import _write_timelapse

    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    for name in ("t.webp", "t.gif"):
        _write_timelapse(tmp_path / name, frames)
        with Image.open(tmp_path / name) as animation:
            assert animation.n_frames == 3


def test_missing_models_exit_1_with_the_registry_message(tmp_path: Path, capsys) -> None:
    code = main(["imagine", "a cat", "-o", str(tmp_path / "x.png"), "--model-dir", str(tmp_path / "empty"),
                 "--device", "cpu", "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert "vqgan-clip download" in err and "vqgan_imagenet_f16_16384" in err
    assert not (tmp_path / "x.png").exists()


def test_bad_prompt_exits_1_before_loading_models(tmp_path: Path, capsys) -> None:
    assert main(["imagine", "a +", "--model-dir", str(tmp_path / "nothing-here")]) == 1
    assert "part 2 of the prompt is empty" in capsys.readouterr().err


def test_non_image_init_exits_1(tmp_path: Path, capsys) -> None:
    bogus = tmp_path / "photo.jpg"
    bogus.write_text("not really a photo")
    assert main(["edit", str(bogus), "a cat", "--model-dir", str(tmp_path)]) == 1
    assert "the init image is not an image" in capsys.readouterr().err


def test_bad_timelapse_suffix_exits_1(tmp_path: Path, capsys) -> None:
    assert main(["imagine", "a cat", "--timelapse", str(tmp_path / "t.mp4"), "--model-dir", str(tmp_path)]) == 1
    assert ".webp or .gif" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "size"), [("512", (512, 512)), ("640x384", (640, 384)), ("64X32", (64, 32))])
def test_size_option(text: str, size: tuple[int, int]) -> None:
    from engine.commands.generate import parse_size

    assert parse_size(text) == size


@pytest.fixture
def models_must_not_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading models takes seconds and about a gigabyte: a bad argument must not cost that."""
    import engine.models

    def load_models(spec):
        pytest.fail("the models were loaded before the arguments were checked")

    monkeypatch.setattr(engine.models, "load_models", load_models)


BAD_OPTIONS = [
    (["--seed", str(2**53 + 1)], "--seed: the seed must be a whole number from 0 to 9,007,199,254,740,992"),
    (["--seed", "-1"], "--seed: the seed must be a whole number from 0"),
    (["--seed", "1.5"], "--seed: expected a whole number, not '1.5'"),
    (["--lr", "0"], "--lr: expected a number above 0, not '0'"),
    (["--lr", "nan"], "--lr: expected a finite number, not 'nan'"),
    (["--lr", "fast"], "--lr: expected a number, not 'fast'"),
    (["--cut-pow", "-1"], "--cut-pow: expected a number above 0, not '-1'"),
    (["--cut-pow", "inf"], "--cut-pow: expected a finite number, not 'inf'"),
    (["--l2", "-0.1"], "--l2: expected 0 or a positive number, not '-0.1'"),
    (["--l2-decay", "cosine"], "--l2-decay: invalid choice: 'cosine'"),
]


@pytest.mark.parametrize(("options", "message"), BAD_OPTIONS, ids=[" ".join(o) for o, _ in BAD_OPTIONS])
def test_a_bad_option_is_a_usage_error_before_the_models_load(
        options: list[str], message: str, tmp_path: Path, capsys, models_must_not_load) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["imagine", "a cat", "-o", str(tmp_path / "x.png"), *options])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


EDIT_BAD_OPTIONS = [
    (["--keep-structure", "-0.5"], "--keep-structure: expected 0 or a positive number, not '-0.5'"),
    (["--keep-structure", "nan"], "--keep-structure: expected a finite number, not 'nan'"),
    (["--replace", " \t "], "--replace: the phrase is empty; name the part of the image to change"),
    (["--original-weight", "-1"], "--original-weight: expected 0 or a positive number, not '-1'"),
]


@pytest.mark.parametrize(("options", "message"), EDIT_BAD_OPTIONS,
                         ids=[" ".join(o) for o, _ in EDIT_BAD_OPTIONS])
def test_a_bad_edit_option_is_a_usage_error_before_the_models_load(
        options: list[str], message: str, tmp_path: Path, capsys, models_must_not_load) -> None:
    photo = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(photo)
    with pytest.raises(SystemExit) as exit_info:
        main(["edit", str(photo), "a cat", "-o", str(tmp_path / "x.png"), *options])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_original_weight_without_a_mask_exits_1_before_the_models_load(
        tmp_path: Path, capsys, models_must_not_load) -> None:
    """The G.2 weight weighs the original in masked edits; elsewhere it would do nothing."""
    photo = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(photo)
    assert main(["edit", str(photo), "a cat", "-o", str(tmp_path / "x.png"), "--original-weight", "1"]) == 1
    assert "--original-weight weighs the original image in masked edits" in capsys.readouterr().err


HELP_NAMES = {
    "imagine": ["--l2 ALPHA", "--l2-decay {linear,step,inverse}", "section 2.4", "default 0.75", "default linear"],
    "edit": ["--l2 ALPHA", "--l2-decay {linear,step,inverse}", "--keep-structure WEIGHT", "--original-weight WEIGHT",
             "appendix G.2", "default 0.5"],
}


@pytest.mark.parametrize("command", list(HELP_NAMES))
def test_help_documents_the_method_options(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert all(name in text for name in HELP_NAMES[command]), text


def test_edit_options_reach_the_png(tiny_models, tmp_path: Path) -> None:
    photo, mask, out = tmp_path / "photo.png", tmp_path / "mask.png", tmp_path / "edited.png"
    Image.new("RGB", (32, 32), (30, 120, 40)).save(photo)
    Image.new("L", (32, 32), 255).save(mask)
    assert main(["edit", str(photo), "a cat", "--mask", str(mask), "-o", str(out), "--size", "32",
                 "--iterations", "1", "--l2", "0.3", "--l2-decay", "step", "--keep-structure", "0.2",
                 "--original-weight", "0.7", *_tiny_args(tiny_models)]) == 0
    meta = png_metadata(out.read_bytes())
    assert ((meta["l2"], meta["l2_decay"], meta["keep_structure"], meta["original_weight"])
            == ("0.3", "step", "0.2", "0.7"))


def test_an_output_that_is_a_folder_exits_1_before_the_models_load(
        tmp_path: Path, capsys, models_must_not_load) -> None:
    assert main(["imagine", "a cat", "-o", str(tmp_path)]) == 1
    assert f"the output {tmp_path} is a folder" in capsys.readouterr().err


def test_the_largest_seed_is_accepted(tiny_models, tmp_path: Path) -> None:
    """2**53 is the largest seed the bot can ask for; the CLI takes the same range."""
    out = tmp_path / "x.png"
    assert main(["imagine", "a cat", "-o", str(out), "--size", "16", "--iterations", "1",
                 "--seed", str(2**53), *_tiny_args(tiny_models)]) == 0
    assert png_metadata(out.read_bytes())["seed"] == str(2**53)


@pytest.fixture
def restore_threads():
    """`--threads` sets torch's thread count for the whole process: put it back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_threads_sets_the_cpu_threads_of_the_run_and_the_png_records_them(
        tiny_models, tmp_path: Path, restore_threads) -> None:
    import torch

    out = tmp_path / "x.png"
    wanted = 1 if torch.get_num_threads() != 1 else 2
    assert main(["imagine", "a cat", "-o", str(out), "--size", "16", "--iterations", "1",
                 "--threads", str(wanted), *_tiny_args(tiny_models)]) == 0
    meta = png_metadata(out.read_bytes())
    assert (meta["device"], meta["threads"]) == ("cpu", str(wanted))


def test_bad_size_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["imagine", "a cat", "--size", "big"])
    assert exit_info.value.code == 2
    assert "WIDTHxHEIGHT" in capsys.readouterr().err


def test_command_module_imports_no_torch() -> None:
    import subprocess
    import sys

    code = "import sys, engine.commands.generate; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
