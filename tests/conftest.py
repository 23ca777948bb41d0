"""Shared fixtures. Nothing here reaches the network."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory):
    """Tiny random VQModel, GumbelVQ and CLIP files, written once per test session.

    Returns `engine.models.tiny.TestModels` (paths + names). The directory works as a
    MODEL_DIR: `ModelSpec(vqgan="tiny_vqgan", clip="tiny_clip", model_dir=tiny_models.directory)`.
    Treat the files as read-only; copy them to corrupt them.
    """
    from engine.models.tiny import make_test_models

    return make_test_models(tmp_path_factory.mktemp("tiny_models"))
