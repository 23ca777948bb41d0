"""Settings loading: defaults, precedence, validation messages, and the token never leaking."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import get_args

import pytest

from bot.config import (
    DEFAULTS,
    CompileMode,
    SETTING_NAMES,
    TOKEN_PLACEHOLDER,
    ConfigError,
    Settings,
    format_settings,
    load_settings,
)
from engine.limits import AUTO_BATCH_CUDA, COMPILE_MODES
from tests.bot.conftest import FAKE_TOKEN

EXAMPLE_FILE = Path(__file__).resolve().parents[2] / "config.example.env"


@pytest.fixture(autouse=True)
def _in_empty_dir(empty_dir: Path) -> Path:
    """Relative default paths (./models, ./data) resolve inside an empty directory."""
    return empty_dir


def write_env(path: Path, **values: str) -> Path:
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()), encoding="utf-8")
    return path


def problems_for(environ: dict[str, str], env_file: Path | None = None) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as caught:
        load_settings(env_file, {"DISCORD_TOKEN": FAKE_TOKEN, **environ})
    return caught.value.problems


def problems_without_token(environ: dict[str, str]) -> tuple[str, ...]:
    """Load with exactly `environ` (no token added) and return the problems."""
    with pytest.raises(ConfigError) as caught:
        load_settings(None, environ)
    return caught.value.problems


# --- defaults and precedence -------------------------------------------------------------


def test_defaults_apply_when_only_the_token_is_set() -> None:
    settings = load_settings(None, {"DISCORD_TOKEN": FAKE_TOKEN})
    assert settings == Settings(discord_token=FAKE_TOKEN)
    assert settings.default_size == (512, 512)
    assert settings.max_size == (768, 768)
    assert settings.default_iterations == 400
    assert settings.default_cutn == 32
    assert settings.device == "auto"
    assert settings.dev_guild_id is None
    assert settings.model_dir == Path("models")
    assert settings.auto_download is True


def test_env_file_values_are_read(tmp_path: Path) -> None:
    env_file = write_env(tmp_path / ".env", DISCORD_TOKEN=FAKE_TOKEN, DEFAULT_ITERATIONS="250")
    settings = load_settings(env_file, {})
    assert settings.discord_token == FAKE_TOKEN
    assert settings.default_iterations == 250


def test_environment_overrides_env_file(tmp_path: Path) -> None:
    env_file = write_env(tmp_path / ".env", DISCORD_TOKEN=FAKE_TOKEN, DEFAULT_ITERATIONS="250")
    settings = load_settings(env_file, {"DEFAULT_ITERATIONS": "300"})
    assert settings.default_iterations == 300


def test_empty_environment_value_does_not_override_env_file(tmp_path: Path) -> None:
    env_file = write_env(tmp_path / ".env", DISCORD_TOKEN=FAKE_TOKEN, DEFAULT_ITERATIONS="250")
    settings = load_settings(env_file, {"DEFAULT_ITERATIONS": ""})
    assert settings.default_iterations == 250


def test_empty_value_in_env_file_means_default(tmp_path: Path) -> None:
    env_file = write_env(tmp_path / ".env", DISCORD_TOKEN=FAKE_TOKEN, DEFAULT_CUTN="", DEV_GUILD_ID="")
    settings = load_settings(env_file, {})
    assert settings.default_cutn == 32
    assert settings.dev_guild_id is None


def test_loading_does_not_copy_env_file_into_os_environ(tmp_path: Path) -> None:
    env_file = write_env(tmp_path / ".env", DISCORD_TOKEN=FAKE_TOKEN, MAX_QUEUED_PER_USER="7")
    before = os.environ.get("MAX_QUEUED_PER_USER")
    load_settings(env_file, {})
    assert os.environ.get("MAX_QUEUED_PER_USER") == before
    assert os.environ.get("DISCORD_TOKEN") != FAKE_TOKEN


def test_missing_env_file_is_not_an_error(tmp_path: Path) -> None:
    settings = load_settings(tmp_path / "absent.env", {"DISCORD_TOKEN": FAKE_TOKEN})
    assert settings.discord_token == FAKE_TOKEN


def test_dollar_sign_in_env_file_is_read_literally(tmp_path: Path) -> None:
    env_file = write_env(tmp_path / ".env", DISCORD_TOKEN=FAKE_TOKEN, MODEL_DIR="./m$HOME")
    assert load_settings(env_file, {}).model_dir == Path("m$HOME")


# --- parsing of each kind -----------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [("640x384", (640, 384)), ("640X384", (640, 384)), ("256 x 256", (256, 256))])
def test_sizes_parse_as_width_by_height(text: str, expected: tuple[int, int]) -> None:
    assert load_settings(None, {"DISCORD_TOKEN": FAKE_TOKEN, "DEFAULT_SIZE": text}).default_size == expected


@pytest.mark.parametrize(("text", "expected"), [("yes", True), ("1", True), ("TRUE", True), ("off", False), ("0", False), ("False", False)])
def test_booleans_accept_common_spellings(text: str, expected: bool) -> None:
    assert load_settings(None, {"DISCORD_TOKEN": FAKE_TOKEN, "AUTO_DOWNLOAD": text}).auto_download is expected


def test_device_and_log_level_are_case_insensitive() -> None:
    settings = load_settings(None, {"DISCORD_TOKEN": FAKE_TOKEN, "DEVICE": "CUDA", "LOG_LEVEL": "debug"})
    assert (settings.device, settings.log_level) == ("cuda", "DEBUG")


def test_dev_guild_id_parses_as_int() -> None:
    settings = load_settings(None, {"DISCORD_TOKEN": FAKE_TOKEN, "DEV_GUILD_ID": "123456789012345678"})
    assert settings.dev_guild_id == 123456789012345678


def test_zero_daily_quota_is_allowed_and_means_unlimited() -> None:
    assert load_settings(None, {"DISCORD_TOKEN": FAKE_TOKEN, "DEFAULT_DAILY_QUOTA": "0"}).default_daily_quota == 0


def test_progress_interval_accepts_fractions() -> None:
    assert load_settings(None, {"DISCORD_TOKEN": FAKE_TOKEN, "PROGRESS_INTERVAL": "2.5"}).progress_interval == 2.5


def test_own_vqgan_files_override_the_model_name(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text("model: {}\n")
    (tmp_path / "mine.ckpt").write_bytes(b"\0")
    settings = load_settings(None, {
        "DISCORD_TOKEN": FAKE_TOKEN,
        "VQGAN_CONFIG": str(tmp_path / "mine.yaml"),
        "VQGAN_CHECKPOINT": str(tmp_path / "mine.ckpt"),
    })
    assert settings.vqgan_config == tmp_path / "mine.yaml"
    assert settings.vqgan_checkpoint == tmp_path / "mine.ckpt"
    assert settings.uses_custom_vqgan_files


def test_clip_model_given_as_existing_file_is_a_path(tmp_path: Path) -> None:
    (tmp_path / "clip.pt").write_bytes(b"\0")
    settings = load_settings(None, {"DISCORD_TOKEN": FAKE_TOKEN, "CLIP_MODEL": str(tmp_path / "clip.pt")})
    assert settings.clip_model_is_path


def test_clip_model_given_as_file_name_in_model_dir_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "tiny_clip.pt").write_bytes(b"\0")
    settings = load_settings(None, {"DISCORD_TOKEN": FAKE_TOKEN, "CLIP_MODEL": "tiny_clip.pt", "MODEL_DIR": str(tmp_path)})
    assert settings.clip_model == "tiny_clip.pt"
    assert settings.clip_model_is_path


def test_clip_model_name_with_slash_is_not_a_path() -> None:
    settings = load_settings(None, {"DISCORD_TOKEN": FAKE_TOKEN, "CLIP_MODEL": "ViT-L/14"})
    assert settings.clip_model == "ViT-L/14"
    assert not settings.clip_model_is_path


def test_engine_batch_auto_leaves_the_batch_to_the_engine() -> None:
    for value in ("auto", "AUTO", ""):
        assert load_settings(None, {"DISCORD_TOKEN": FAKE_TOKEN, "ENGINE_BATCH": value}).engine_batch is None


@pytest.mark.parametrize("value", ["1", "4", "64"])
def test_engine_batch_takes_a_whole_number_of_jobs_from_1_to_64(value: str) -> None:
    settings = load_settings(None, {"DISCORD_TOKEN": FAKE_TOKEN, "ENGINE_BATCH": value})
    assert settings.engine_batch == int(value)


def test_a_bad_engine_batch_names_the_range_and_how_to_turn_batching_off() -> None:
    (problem,) = problems_for({"ENGINE_BATCH": "100"})
    assert "'100'" in problem and "1 to 64" in problem
    assert "ENGINE_BATCH=auto" in problem and "ENGINE_BATCH=1" in problem
    assert f"{AUTO_BATCH_CUDA} on a GPU" in problem


def test_engine_devices_is_empty_by_default_one_engine_on_device() -> None:
    assert load_settings(None, {"DISCORD_TOKEN": FAKE_TOKEN}).engine_devices == ()


def test_engine_devices_lists_each_device_lowercased_without_spaces() -> None:
    settings = load_settings(None, {"DISCORD_TOKEN": FAKE_TOKEN, "ENGINE_DEVICES": "CUDA:0, cuda:1"})
    assert settings.engine_devices == ("cuda:0", "cuda:1")


def test_engine_devices_is_shown_comma_separated_by_check_config() -> None:
    settings = load_settings(None, {"DISCORD_TOKEN": FAKE_TOKEN, "ENGINE_DEVICES": "cuda:0,cpu"})
    assert "ENGINE_DEVICES=cuda:0,cpu" in format_settings(settings).splitlines()


def test_a_bad_engine_device_is_named_with_the_devices_it_may_be() -> None:
    (problem,) = problems_for({"ENGINE_DEVICES": "cuda:0,gpu1"})
    assert problem.startswith("ENGINE_DEVICES: ") and "'gpu1'" in problem
    assert "cuda:N" in problem and "ENGINE_DEVICES=cuda:0,cuda:1" in problem


def test_engine_devices_refuses_auto_which_could_be_a_listed_gpu_again() -> None:
    (problem,) = problems_for({"ENGINE_DEVICES": "auto,cuda:1"})
    assert "'auto' is not a device" in problem


def test_an_empty_entry_in_engine_devices_is_a_problem() -> None:
    (problem,) = problems_for({"ENGINE_DEVICES": "cuda:0,,cuda:1"})
    assert "empty entry" in problem


@pytest.mark.parametrize("value", ["cuda:1,cuda:1", "cuda,cuda:0"])
def test_a_device_named_twice_in_engine_devices_is_a_problem(value: str) -> None:
    (problem,) = problems_for({"ENGINE_DEVICES": value})
    assert "more than once" in problem and "cuda is cuda:0" in problem


def test_engine_devices_with_the_redis_backend_says_to_run_one_worker_per_gpu() -> None:
    (problem,) = problems_for({"ENGINE_DEVICES": "cuda:0,cuda:1", "ENGINE_BACKEND": "redis",
                               "REDIS_URL": "redis://bot:pw-7@127.0.0.1:6379/0"})
    assert problem.startswith("ENGINE_DEVICES: ") and "ENGINE_BACKEND=redis" in problem
    assert "--device cuda:N" in problem


@pytest.mark.parametrize(("value", "expected"), [("auto", "auto"), ("ON", "on"), ("off", "off")])
def test_engine_compile_is_auto_on_or_off_in_any_case(value: str, expected: str) -> None:
    settings = load_settings(None, {"DISCORD_TOKEN": FAKE_TOKEN, "ENGINE_COMPILE": value})
    assert settings.engine_compile == expected


def test_engine_compile_takes_exactly_the_engines_compile_modes() -> None:
    for mode in COMPILE_MODES:
        assert load_settings(None, {"DISCORD_TOKEN": FAKE_TOKEN, "ENGINE_COMPILE": mode}).engine_compile == mode
    assert set(get_args(CompileMode)) == set(COMPILE_MODES)


def test_a_bad_engine_compile_says_what_each_mode_does() -> None:
    (problem,) = problems_for({"ENGINE_COMPILE": "yes"})
    assert problem.startswith("ENGINE_COMPILE: 'yes' is not auto, on or off")
    assert "ENGINE_COMPILE=off" in problem


def test_settings_are_frozen() -> None:
    settings = load_settings(None, {"DISCORD_TOKEN": FAKE_TOKEN})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.max_cutn = 1  # type: ignore[misc]


# --- invalid values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DEV_GUILD_ID", "my-server"),
        ("DEV_GUILD_ID", "-5"),
        ("VQGAN_MODEL", "models/vqgan.ckpt"),
        ("CLIP_MODEL", "./missing-clip.pt"),
        ("DEVICE", "gpu"),
        ("DEFAULT_SIZE", "512"),
        ("DEFAULT_SIZE", "500x512"),
        ("MAX_SIZE", "32x32"),
        ("MAX_SIZE", "8192x8192"),
        ("DEFAULT_ITERATIONS", "abc"),
        ("DEFAULT_ITERATIONS", "0"),
        ("MAX_ITERATIONS", "1.5"),
        ("DEFAULT_CUTN", "-1"),
        ("MAX_CUTN", "many"),
        ("PROGRESS_INTERVAL", "0.2"),
        ("PROGRESS_INTERVAL", "nan"),
        ("DEFAULT_DAILY_QUOTA", "-1"),
        ("MAX_QUEUED_PER_USER", "0"),
        ("LOG_LEVEL", "LOUD"),
        ("AUTO_DOWNLOAD", "maybe"),
        ("ENGINE_BATCH", "0"),
        ("ENGINE_BATCH", "65"),
        ("ENGINE_BATCH", "lots"),
        ("ENGINE_COMPILE", "fast"),
    ],
)
def test_invalid_value_is_reported_under_its_setting_name(name: str, value: str) -> None:
    problems = problems_for({name: value})
    assert len(problems) == 1
    assert problems[0].startswith(f"{name}: ")


def test_size_that_is_not_a_multiple_of_16_suggests_the_nearest_that_is() -> None:
    (problem,) = problems_for({"DEFAULT_SIZE": "500x300"})
    assert "DEFAULT_SIZE=496x304" in problem


def test_default_size_larger_than_max_size_is_rejected() -> None:
    (problem,) = problems_for({"DEFAULT_SIZE": "1024x512", "MAX_SIZE": "768x768"})
    assert problem.startswith("DEFAULT_SIZE: ")
    assert "MAX_SIZE" in problem


def test_default_iterations_above_max_is_rejected() -> None:
    (problem,) = problems_for({"DEFAULT_ITERATIONS": "500", "MAX_ITERATIONS": "100"})
    assert problem.startswith("DEFAULT_ITERATIONS: ")
    assert "MAX_ITERATIONS=100" in problem


def test_default_cutn_above_max_is_rejected() -> None:
    (problem,) = problems_for({"DEFAULT_CUTN": "64", "MAX_CUTN": "16"})
    assert problem.startswith("DEFAULT_CUTN: ")


def test_vqgan_config_without_checkpoint_asks_for_both(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text("model: {}\n")
    (problem,) = problems_for({"VQGAN_CONFIG": str(tmp_path / "mine.yaml")})
    assert problem.startswith("VQGAN_CHECKPOINT: ")
    assert "both" in problem


def test_vqgan_files_that_do_not_exist_are_named(tmp_path: Path) -> None:
    problems = problems_for({
        "VQGAN_CONFIG": str(tmp_path / "nope.yaml"),
        "VQGAN_CHECKPOINT": str(tmp_path / "nope.ckpt"),
    })
    assert [p.split(":")[0] for p in problems] == ["VQGAN_CONFIG", "VQGAN_CHECKPOINT"]


def test_model_dir_that_is_a_file_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "models").write_text("")
    (problem,) = problems_for({"MODEL_DIR": str(tmp_path / "models")})
    assert problem.startswith("MODEL_DIR: ")


def test_database_path_that_is_a_directory_is_rejected(tmp_path: Path) -> None:
    (problem,) = problems_for({"DATABASE_PATH": str(tmp_path)})
    assert problem.startswith("DATABASE_PATH: ")


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"DEVICE": "gpu", "DEFAULT_ITERATIONS": "abc", "AUTO_DOWNLOAD": "maybe"})
    named = {p.split(":")[0] for p in caught.value.problems}
    assert named == {"DISCORD_TOKEN", "DEVICE", "DEFAULT_ITERATIONS", "AUTO_DOWNLOAD"}
    assert str(caught.value).count("\n") == 3


# --- the token -----------------------------------------------------------------------------


def test_missing_token_says_where_to_put_it() -> None:
    (problem,) = problems_without_token({})
    assert problem.startswith("DISCORD_TOKEN: ")
    assert "config.example.env" in problem and ".env" in problem
    assert "https://discord.com/developers/applications" in problem
    assert "Reset Token" in problem


def test_placeholder_token_from_example_is_rejected() -> None:
    (problem,) = problems_without_token({"DISCORD_TOKEN": TOKEN_PLACEHOLDER})
    assert problem.startswith("DISCORD_TOKEN: ")
    assert "placeholder" in problem


def test_token_with_bot_prefix_is_rejected_without_echoing_it() -> None:
    token = "Bot " + FAKE_TOKEN
    (problem,) = problems_without_token({"DISCORD_TOKEN": token})
    assert problem.startswith("DISCORD_TOKEN: ")
    assert FAKE_TOKEN not in problem


def test_a_token_not_required_may_be_unset_while_the_rest_is_still_checked() -> None:
    """The sandbox (`vqgan-clip-bot --sandbox`) never talks to Discord."""
    assert load_settings(None, {}, token_required=False).discord_token == ""
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"MAX_CUTN": "many"}, token_required=False)
    assert [p.split(":")[0] for p in caught.value.problems] == ["MAX_CUTN"]


def test_repr_and_str_of_settings_mask_the_token() -> None:
    settings = load_settings(None, {"DISCORD_TOKEN": FAKE_TOKEN})
    for text in (repr(settings), str(settings), f"{settings}", format_settings(settings)):
        assert FAKE_TOKEN not in text
        assert "<hidden>" in text


def test_error_messages_never_contain_the_token() -> None:
    # A token pasted into the wrong setting too: no message may repeat it.
    bad_token = FAKE_TOKEN + " "
    environ = {"DISCORD_TOKEN": "Bot " + FAKE_TOKEN, "DEVICE": FAKE_TOKEN, "DEFAULT_SIZE": FAKE_TOKEN,
               "LOG_LEVEL": bad_token, "DEV_GUILD_ID": FAKE_TOKEN}
    with pytest.raises(ConfigError) as caught:
        load_settings(None, environ)
    assert len(caught.value.problems) == 5
    for text in (*caught.value.problems, str(caught.value), repr(caught.value)):
        assert FAKE_TOKEN not in text


def test_unknown_setting_in_env_file_is_warned_by_name_without_its_value(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    env_file = write_env(tmp_path / ".env", DISCORD_TOKEN=FAKE_TOKEN, DISCORD_TOKN="secret-value-123")
    with caplog.at_level(logging.WARNING, logger="bot.config"):
        load_settings(env_file, {})
    assert "DISCORD_TOKN" in caplog.text
    assert "secret-value-123" not in caplog.text


# --- the example file ---------------------------------------------------------------------


def test_example_file_with_a_token_gives_the_documented_defaults() -> None:
    settings = load_settings(EXAMPLE_FILE, {"DISCORD_TOKEN": FAKE_TOKEN})
    assert settings == Settings(discord_token=FAKE_TOKEN)


def test_example_file_documents_every_setting_with_its_default_and_a_comment() -> None:
    lines = EXAMPLE_FILE.read_text(encoding="utf-8").splitlines()
    assignments = {}
    for index, line in enumerate(lines):
        match = re.fullmatch(r"([A-Z_]+)=(.*)", line)
        if match:
            assignments[match[1]] = (match[2], index)
    assert set(assignments) == set(SETTING_NAMES)
    for name, (value, index) in assignments.items():
        expected = TOKEN_PLACEHOLDER if name == "DISCORD_TOKEN" else DEFAULTS[name]
        assert value == expected, name
        # The nearest non-assignment line above is a comment that explains it.
        above = next(lines[i] for i in range(index - 1, -1, -1) if not re.fullmatch(r"[A-Z_]+=.*", lines[i]))
        assert above.startswith("# ") and len(above) > 10, name


def test_dataclass_defaults_match_the_documented_defaults() -> None:
    settings = Settings(discord_token=FAKE_TOKEN)
    for line in format_settings(settings).splitlines():
        name, value = line.split("=", 1)
        if name != "DISCORD_TOKEN":
            assert value == DEFAULTS[name].removeprefix("./"), name


def test_example_file_as_shipped_is_rejected_for_its_placeholder_token() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(EXAMPLE_FILE, {})
    assert [p.split(":")[0] for p in caught.value.problems] == ["DISCORD_TOKEN"]


# --- remote workers: ENGINE_BACKEND, REDIS_URL, REDIS_PREFIX ---------------------------

REDIS_PASSWORD = "redis-pw-never-shown-42"


def test_redis_url_is_parsed_and_its_password_never_shown() -> None:
    settings = load_settings(None, {"DISCORD_TOKEN": FAKE_TOKEN,
                                    "REDIS_URL": f"redis://bot:{REDIS_PASSWORD}@cache:6380/1",
                                    "REDIS_PREFIX": "vqc-prod:"})
    assert settings.redis_url is not None and settings.redis_url.password == REDIS_PASSWORD
    assert (settings.redis_url.host, settings.redis_url.port, settings.redis_prefix) == (
        "cache", 6380, "vqc-prod:")
    for text in (repr(settings), str(settings), format_settings(settings)):
        assert REDIS_PASSWORD not in text
    assert "REDIS_URL=redis://bot:***@cache:6380/1" in format_settings(settings)
    assert settings.engine_backend == "local"


def test_a_bad_redis_url_is_a_clear_problem_without_the_password() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"DISCORD_TOKEN": FAKE_TOKEN,
                             "REDIS_URL": f"http://bot:{REDIS_PASSWORD}@cache/1"})
    problem, = caught.value.problems
    assert problem.startswith("REDIS_URL: ") and "redis:// or rediss://" in problem
    assert REDIS_PASSWORD not in str(caught.value)


def test_engine_backend_redis_needs_a_redis_url() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"DISCORD_TOKEN": FAKE_TOKEN, "ENGINE_BACKEND": "redis"})
    (problem,) = caught.value.problems
    assert problem.startswith("REDIS_URL: ") and "ENGINE_BACKEND=redis needs it" in problem


def test_engine_backend_redis_with_a_redis_url_is_accepted() -> None:
    settings = load_settings(None, {"DISCORD_TOKEN": FAKE_TOKEN, "ENGINE_BACKEND": "redis",
                                    "REDIS_URL": "redis://bot:pw-7@127.0.0.1:6379/0"})
    assert settings.engine_backend == "redis" and settings.redis_url is not None


@pytest.mark.parametrize("name, value, words", [
    ("ENGINE_BACKEND", "cloud", "not one of local, redis"),
    ("REDIS_PREFIX", "bad prefix*", "not a usable key prefix"),
])
def test_remote_worker_settings_are_checked(name: str, value: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_settings(None, {"DISCORD_TOKEN": FAKE_TOKEN, name: value})
