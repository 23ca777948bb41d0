"""The README's pictures: committed, and small enough to keep the repository light."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
#: The largest picture the README may show.
MAX_IMAGE_BYTES = 300 * 1024


def readme_images() -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (ROOT / "README.md").read_text(encoding="utf-8"))


def test_the_readme_shows_pictures_of_the_sandbox() -> None:
    assert {"docs/sandbox-progress.png", "docs/sandbox-result.png"} <= set(readme_images())


@pytest.mark.parametrize("path", readme_images())
def test_every_readme_picture_is_a_small_png_under_docs(path: str) -> None:
    file = ROOT / path
    assert path.startswith("docs/") and file.is_file(), f"{path} is not committed under docs/"
    assert file.stat().st_size <= MAX_IMAGE_BYTES, f"{path}: {file.stat().st_size} bytes"
    with Image.open(file) as image:
        assert image.format == "PNG"
