"""run.sh, test.sh and scripts/bootstrap.sh, run as a person runs them.

The virtual environment they see is a stand-in whose `python` only writes down how it was
called: so a test can tell whether the scripts asked pip to install anything, and never
reaches the network. The bot itself runs for real, from the environment running the tests.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Looks like a bot token to the settings check; it is nobody's.
FAKE_TOKEN = "MTAxMjM0NTY3ODkwMTIzNDU2.GaBcDe.fake-token-for-script-tests_0123456789"

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="bash scripts")


class FakeVenv:
    """A venv directory whose `bin/python` records its arguments and succeeds, and whose
    `bin/vqgan-clip-bot` is the real console script of the environment running the tests."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.calls = directory / "python-calls.txt"
        bin_dir = directory / "bin"
        bin_dir.mkdir(parents=True)
        python = bin_dir / "python"
        python.write_text(f'#!/bin/sh\necho "$*" >> "{self.calls}"\n')
        python.chmod(python.stat().st_mode | stat.S_IXUSR)
        real_bot = Path(sys.executable).parent / "vqgan-clip-bot"
        assert real_bot.exists(), "the project is not installed in the test environment"
        (bin_dir / "vqgan-clip-bot").symlink_to(real_bot)

    def python_calls(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []

    def forget_calls(self) -> None:
        self.calls.unlink(missing_ok=True)


@pytest.fixture
def venv(tmp_path: Path) -> FakeVenv:
    return FakeVenv(tmp_path / "venv")


@pytest.fixture
def env(tmp_path: Path, venv: FakeVenv) -> dict[str, str]:
    """Only what the scripts need: none of the caller's settings (or real token) get in."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "VENV": str(venv.directory),
        "PYTHON": sys.executable,
        "DISCORD_TOKEN": FAKE_TOKEN,
        "AUTO_DOWNLOAD": "false",
        "MODEL_DIR": str(tmp_path / "models"),
        "DATABASE_PATH": str(tmp_path / "data" / "bot.sqlite3"),
        "RESULTS_DIR": str(tmp_path / "data" / "results"),
    }


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


def install(extra: str, env: dict[str, str]) -> None:
    """What run.sh (`base`) or test.sh (`test`) leaves behind after a first install."""
    done = run(["bash", "-c", f"source scripts/bootstrap.sh {extra}"], env)
    assert done.returncode == 0, done.stderr


def test_check_config_validates_the_settings_without_installing_anything(
        tmp_path: Path, venv: FakeVenv, env: dict[str, str]) -> None:
    install("base", env)
    venv.forget_calls()
    done = run(["./run.sh", "--check-config", "--env-file", str(tmp_path / "no.env")], env)
    assert (done.returncode, venv.python_calls()) == (0, []), done.stderr
    assert "configuration OK" in done.stdout
    assert FAKE_TOKEN not in done.stdout + done.stderr


def test_check_config_with_a_bad_setting_exits_2_naming_it(
        tmp_path: Path, venv: FakeVenv, env: dict[str, str]) -> None:
    install("base", env)
    done = run(["./run.sh", "--check-config", "--env-file", str(tmp_path / "no.env")],
               {**env, "AUTO_DOWNLOAD": "perhaps"})
    assert done.returncode == 2
    assert "AUTO_DOWNLOAD" in done.stderr and "configuration OK" not in done.stdout
    assert FAKE_TOKEN not in done.stdout + done.stderr


def test_help_after_the_test_install_needs_no_base_install(
        venv: FakeVenv, env: dict[str, str]) -> None:
    """The test extra holds everything the base install does: alternating ./test.sh and
    ./run.sh must not reinstall each time."""
    install("test", env)
    venv.forget_calls()
    done = run(["./run.sh", "--help"], env)
    assert (done.returncode, venv.python_calls()) == (0, []), done.stderr
    assert "--check-config" in done.stdout


def test_a_fresh_venv_installs_the_project_with_the_extra_asked_for(
        venv: FakeVenv, env: dict[str, str]) -> None:
    install("test", env)
    assert f"-m pip install -e {ROOT}[test]" in venv.python_calls()


def test_bootstrap_refuses_an_unknown_extra(venv: FakeVenv, env: dict[str, str]) -> None:
    done = run(["bash", "-c", "source scripts/bootstrap.sh --check-config"], env)
    assert done.returncode != 0 and "base, sandbox or test" in done.stderr
    assert venv.python_calls() == []


def test_run_sh_with_sandbox_installs_the_sandbox_extra(venv: FakeVenv, env: dict[str, str]) -> None:
    """The simulated Discord's libraries are not part of the bot: only --sandbox asks for them."""
    install("base", env)
    venv.forget_calls()
    done = run(["./run.sh", "--sandbox", "--help"], env)
    assert done.returncode == 0, done.stderr
    assert f"-m pip install -e {ROOT}[sandbox]" in venv.python_calls()


def test_run_sh_with_sandbox_after_the_test_install_installs_nothing(
        venv: FakeVenv, env: dict[str, str]) -> None:
    """The test extra holds everything the sandbox extra does."""
    install("test", env)
    venv.forget_calls()
    done = run(["./run.sh", "--sandbox", "--help"], env)
    assert (done.returncode, venv.python_calls()) == (0, []), done.stderr
    assert "--sandbox-data" in done.stdout


def test_run_sh_without_sandbox_after_the_sandbox_install_installs_nothing(
        venv: FakeVenv, env: dict[str, str]) -> None:
    install("sandbox", env)
    venv.forget_calls()
    done = run(["./run.sh", "--help"], env)
    assert (done.returncode, venv.python_calls()) == (0, []), done.stderr
