"""Settings: `.env` + environment -> one validated, immutable `Settings`.

Why this module is strict: an operator who mistypes a setting should learn it at start-up,
all at once, with the setting's name and the fix, not from a traceback an hour later when
the first job runs. So every value is parsed and range-checked here, every problem is
collected, and `ConfigError` carries them all.

Why it is careful with the token: the token is the bot's password. It is never echoed in
an error, never in `repr`/`str` of `Settings`, and the loader never writes it into
`os.environ` (python-dotenv's `dotenv_values` only reads). The same goes for the password
in REDIS_URL (`engine.redis_url`: kept in a `RedisTarget`, shown as ***).

Precedence: a variable set (non-empty) in the process environment wins over `.env`, which
wins over the defaults below. An empty value counts as unset, because container tools and
shell scripts often pass `NAME=` for "not configured".
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

from dotenv import dotenv_values

from engine.limits import AUTO_BATCH_CPU, AUTO_BATCH_CUDA, DEFAULT_MAX_IMAGE_BYTES, MAX_BATCH
from engine.redis_layout import DEFAULT_PREFIX, LayoutError, check_prefix
from engine.redis_url import RedisTarget, RedisUrlError, hide_secret, parse_redis_url, redact_url

log = logging.getLogger(__name__)

#: Where an operator gets a token; quoted in the missing-token message and the example file.
TOKEN_HELP = (
    "copy config.example.env to .env and set DISCORD_TOKEN=..., from "
    "https://discord.com/developers/applications -> your app -> Bot -> Reset Token"
)
#: The placeholder value in config.example.env; a token equal to it was never filled in.
TOKEN_PLACEHOLDER = "paste-your-bot-token-here"

EngineBackend = Literal["local", "redis"]
ENGINE_BACKENDS: tuple[EngineBackend, ...] = ("local", "redis")
Device = Literal["auto", "cuda", "cpu"]
_DEVICE_NAMES: dict[str, Device] = {"auto": "auto", "cuda": "cuda", "cpu": "cpu"}
DEVICES = tuple(_DEVICE_NAMES)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
CompileMode = Literal["auto", "on", "off"]
#: ENGINE_COMPILE's values: the engine's `--compile` modes (engine.limits.COMPILE_MODES).
_COMPILE_MODES: dict[str, CompileMode] = {"auto": "auto", "on": "on", "off": "off"}
#: Every size must be a multiple of this: the VQGAN downsampling factor (16 for the f16
#: models; the f8 models need 8, which 16 satisfies).
SIZE_MULTIPLE = 16
MIN_SIDE = 64
MAX_SIDE = 4096
MIB = 1024 * 1024
#: The largest MAX_IMAGE_MB: a job's images (init image and image prompt) travel to the
#: engine in one protocol frame, whose blob is at most 32 MiB.
MAX_IMAGE_MB = 15
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

#: The defaults, as text, exactly as config.example.env documents them.
DEFAULTS: dict[str, str] = {
    "DISCORD_TOKEN": "",
    "DEV_GUILD_ID": "",
    "VQGAN_MODEL": "vqgan_imagenet_f16_16384",
    "VQGAN_CONFIG": "",
    "VQGAN_CHECKPOINT": "",
    "CLIP_MODEL": "ViT-B/32",
    "MODEL_DIR": "./models",
    "DEVICE": "auto",
    "ENGINE_DEVICES": "",
    "DATABASE_PATH": "./data/bot.sqlite3",
    "RESULTS_DIR": "./data/results",
    "DEFAULT_SIZE": "512x512",
    "MAX_SIZE": "768x768",
    "DEFAULT_ITERATIONS": "400",
    "MAX_ITERATIONS": "1000",
    "DEFAULT_CUTN": "32",
    "MAX_CUTN": "64",
    "PROGRESS_INTERVAL": "5",
    "DEFAULT_DAILY_QUOTA": "20",
    "MAX_QUEUED_PER_USER": "3",
    "MAX_IMAGE_MB": "8",
    "ENGINE_BATCH": "auto",
    "ENGINE_COMPILE": "auto",
    "LOG_LEVEL": "INFO",
    "AUTO_DOWNLOAD": "true",
    "ENGINE_BACKEND": "local",
    "REDIS_URL": "",
    "REDIS_PREFIX": DEFAULT_PREFIX,
}
SETTING_NAMES: tuple[str, ...] = tuple(DEFAULTS)


class ConfigError(Exception):
    """The settings are unusable. `problems` holds one line per problem, each naming the
    setting and the fix; `str()` joins them with newlines, fit to print as is."""

    def __init__(self, problems: list[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True, repr=False)
class Settings:
    """Everything the bot process is configured with. Built by `load_settings`.

    Frozen so that no part of the bot can change configuration behind another's back.
    """

    discord_token: str
    dev_guild_id: int | None = None
    vqgan_model: str = DEFAULTS["VQGAN_MODEL"]
    vqgan_config: Path | None = None
    vqgan_checkpoint: Path | None = None
    clip_model: str = DEFAULTS["CLIP_MODEL"]
    model_dir: Path = Path(DEFAULTS["MODEL_DIR"])
    device: Device = "auto"
    #: One engine process per device (`cpu`, `cuda`, `cuda:N`), jobs spread over them; empty
    #: = one engine on DEVICE. See `bot.engine_pool`.
    engine_devices: tuple[str, ...] = ()
    database_path: Path = Path(DEFAULTS["DATABASE_PATH"])
    results_dir: Path = Path(DEFAULTS["RESULTS_DIR"])
    default_size: tuple[int, int] = (512, 512)  # (width, height)
    max_size: tuple[int, int] = (768, 768)  # (width, height)
    default_iterations: int = 400
    max_iterations: int = 1000
    default_cutn: int = 32
    max_cutn: int = 64
    progress_interval: float = 5.0  # seconds between edits of a progress message
    default_daily_quota: int = 20  # images per user per rolling 24 h; 0 = unlimited
    max_queued_per_user: int = 3
    #: Largest uploaded image in MiB, checked by the bot before queueing and by the engine again.
    max_image_mb: int = DEFAULT_MAX_IMAGE_BYTES // MIB
    #: Jobs the engine optimises at once (`--batch`); None = the engine's own default.
    engine_batch: int | None = None
    #: Whether the engine compiles its steps with torch.compile (`--compile`).
    engine_compile: CompileMode = "auto"
    log_level: str = "INFO"
    auto_download: bool = True
    #: Where jobs run: `local`, the engine child process; `redis`, remote workers.
    engine_backend: EngineBackend = "local"
    #: The remote workers' Redis (its repr hides the password); None unless set.
    redis_url: RedisTarget | None = None
    redis_prefix: str = DEFAULT_PREFIX

    def __repr__(self) -> str:
        # The token is the bot's password: show that it is set, never what it is.
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            shown = "'<hidden>'" if f.name == "discord_token" else repr(value)
            parts.append(f"{f.name}={shown}")
        return f"Settings({', '.join(parts)})"

    __str__ = __repr__

    @property
    def max_image_bytes(self) -> int:
        return self.max_image_mb * MIB

    @property
    def uses_custom_vqgan_files(self) -> bool:
        """True when VQGAN_CONFIG/VQGAN_CHECKPOINT name the files, overriding VQGAN_MODEL."""
        return self.vqgan_config is not None

    @property
    def clip_model_is_path(self) -> bool:
        """True when CLIP_MODEL names a file rather than a known model such as ViT-B/32."""
        return clip_name_is_path(self.clip_model)


def clip_name_is_path(value: str) -> bool:
    """A CLIP_MODEL is a path when it ends in .pt or starts like a path ('/', '.', '~').

    Plain names contain '/' too (ViT-B/32), so a slash alone does not make a path.
    """
    return value.lower().endswith(".pt") or value.startswith(("/", ".", "~", "\\")) or (
        len(value) > 2 and value[1] == ":" and value[2] in "/\\"  # C:\... on Windows
    )


def load_settings(
    env_file: Path | None = Path(".env"),
    environ: Mapping[str, str] | None = None,
    *,
    token_required: bool = True,
) -> Settings:
    """Read `env_file` (if it exists; None = don't read one) and `environ` (default
    `os.environ`), environment winning, and return validated `Settings`.

    `token_required=False` (the sandbox, which never talks to Discord) takes DISCORD_TOKEN
    as it is, unset or not; every other setting is checked as always.

    Raises `ConfigError` listing every problem found, never just the first.
    """
    environ = os.environ if environ is None else environ
    file_values: dict[str, str] = {}
    problems: list[str] = []
    if env_file is not None and env_file.is_file():
        try:
            # interpolate=False: a token or path containing '$' must be read literally.
            raw = dotenv_values(env_file, interpolate=False)
        except (OSError, UnicodeDecodeError) as error:
            problems.append(
                f"{env_file}: cannot be read ({error.__class__.__name__}); "
                "fix its permissions or save it as UTF-8"
            )
            raw = {}
        file_values = {k: v for k, v in raw.items() if v is not None}
        unknown = sorted(k for k in raw if k not in DEFAULTS)
        if unknown:
            # Names only, never values: a misspelt DISCORD_TOKEN line would hold the token.
            log.warning(
                "ignoring unknown setting(s) in %s: %s (known: %s)",
                env_file, ", ".join(unknown), ", ".join(SETTING_NAMES),
            )

    def raw_value(name: str) -> tuple[str, bool]:
        """The text of a setting and whether the operator set it (False = the default)."""
        for source in (environ, file_values):
            value = source.get(name)
            if value is not None and value.strip() != "":
                return value.strip(), True
        return DEFAULTS[name], False

    parser = _Parser(raw_value, problems)
    token = parser.token() if token_required else raw_value("DISCORD_TOKEN")[0]
    dev_guild_id = parser.optional_snowflake("DEV_GUILD_ID")
    vqgan_model = parser.model_name("VQGAN_MODEL")
    clip_model = parser.text("CLIP_MODEL")
    model_dir = parser.directory("MODEL_DIR")
    device = parser.device("DEVICE")
    engine_devices = parser.engine_devices("ENGINE_DEVICES")
    database_path = parser.file_path("DATABASE_PATH")
    results_dir = parser.directory("RESULTS_DIR")
    default_size, max_size = parser.size("DEFAULT_SIZE"), parser.size("MAX_SIZE")
    default_iterations = parser.integer("DEFAULT_ITERATIONS", minimum=1)
    max_iterations = parser.integer("MAX_ITERATIONS", minimum=1)
    default_cutn = parser.integer("DEFAULT_CUTN", minimum=1)
    max_cutn = parser.integer("MAX_CUTN", minimum=1)
    progress_interval = parser.number("PROGRESS_INTERVAL", minimum=1.0)
    default_daily_quota = parser.integer("DEFAULT_DAILY_QUOTA", minimum=0)
    max_queued_per_user = parser.integer("MAX_QUEUED_PER_USER", minimum=1)
    max_image_mb = parser.integer("MAX_IMAGE_MB", minimum=1, maximum=MAX_IMAGE_MB)
    engine_batch = parser.engine_batch("ENGINE_BATCH")
    engine_compile = parser.compile_mode("ENGINE_COMPILE")
    log_level = parser.choice("LOG_LEVEL", LOG_LEVELS, lower=False)
    auto_download = parser.boolean("AUTO_DOWNLOAD")
    engine_backend = parser.engine_backend("ENGINE_BACKEND")
    redis_url = parser.redis_url("REDIS_URL", needed=engine_backend == "redis")
    redis_prefix = parser.redis_prefix("REDIS_PREFIX")
    parser.devices_are_local(engine_devices, engine_backend)
    vqgan_config, vqgan_checkpoint = parser.vqgan_files()
    parser.clip_path(clip_model, model_dir)
    parser.not_above("DEFAULT_ITERATIONS", default_iterations, "MAX_ITERATIONS", max_iterations)
    parser.not_above("DEFAULT_CUTN", default_cutn, "MAX_CUTN", max_cutn)
    parser.size_not_above(default_size, max_size)
    settings = Settings(
        discord_token=token, dev_guild_id=dev_guild_id, vqgan_model=vqgan_model,
        vqgan_config=vqgan_config, vqgan_checkpoint=vqgan_checkpoint, clip_model=clip_model,
        model_dir=model_dir, device=device, engine_devices=engine_devices,
        database_path=database_path, results_dir=results_dir,
        default_size=default_size, max_size=max_size, default_iterations=default_iterations,
        max_iterations=max_iterations, default_cutn=default_cutn, max_cutn=max_cutn,
        progress_interval=progress_interval, default_daily_quota=default_daily_quota,
        max_queued_per_user=max_queued_per_user, max_image_mb=max_image_mb,
        engine_batch=engine_batch, engine_compile=engine_compile,
        log_level=log_level, auto_download=auto_download, engine_backend=engine_backend,
        redis_url=redis_url, redis_prefix=redis_prefix,
    )

    if problems:
        redis_password = redis_url.password if redis_url is not None else None
        raise ConfigError([hide_secret(redact_url(problem), redis_password)
                           for problem in _redact(problems, token)])
    return settings


def _redact(problems: list[str], token: str) -> list[str]:
    """Belt and braces: no message may contain the token, whatever setting it came from."""
    # The whole value, and each long word of it: "Bot <token>" still hides "<token>".
    secrets = sorted({token, *token.split()} - {""}, key=len, reverse=True)
    secrets = [s for s in secrets if len(s) >= 8]
    redacted = []
    for problem in problems:
        for secret in secrets:
            problem = problem.replace(secret, "<hidden>")
        redacted.append(problem)
    return redacted


class _Parser:
    """Parses one setting at a time, appending a problem line instead of raising, so that
    `load_settings` can report every problem at once. On failure it returns the parsed
    default, so later cross-checks run on sensible values and don't pile on noise."""

    def __init__(self, raw_value: Callable[[str], tuple[str, bool]], problems: list[str]) -> None:
        self._raw = raw_value
        self.problems = problems
        self._failed: set[str] = set()

    def _fail(self, name: str, message: str) -> None:
        self._failed.add(name)
        self.problems.append(f"{name}: {message}")

    def _value(self, name: str) -> str:
        return self._raw(name)[0]

    def _default_hint(self, name: str) -> str:
        return f" (default {DEFAULTS[name]})" if DEFAULTS[name] else ""

    def token(self) -> str:
        value, _ = self._raw("DISCORD_TOKEN")
        if not value:
            self._fail("DISCORD_TOKEN", f"not set. The bot needs its token: {TOKEN_HELP}")
        elif value == TOKEN_PLACEHOLDER:
            self._fail(
                "DISCORD_TOKEN",
                "still the placeholder from config.example.env; replace it with your bot's "
                "token from https://discord.com/developers/applications -> your app -> Bot -> Reset Token",
            )
        elif re.search(r"\s", value) or not value.isascii() or not value.isprintable():
            # Deliberately not echoing the value: it may be a real token.
            self._fail(
                "DISCORD_TOKEN",
                "does not look like a bot token (it contains spaces or unusual characters); "
                "paste only the token itself, without 'Bot ' in front or quotes around it",
            )
        elif any(ch in value for ch in "\"'"):
            self._fail("DISCORD_TOKEN", "contains quote characters; paste only the token itself")
        return value

    def text(self, name: str) -> str:
        return self._value(name)

    def model_name(self, name: str) -> str:
        value = self._value(name)
        if "/" in value or "\\" in value or value.endswith((".ckpt", ".yaml")):
            self._fail(
                name,
                f"{value!r} looks like a path, but {name} takes a model name such as "
                f"{DEFAULTS[name]}; for your own files set VQGAN_CONFIG and VQGAN_CHECKPOINT",
            )
            return DEFAULTS[name]
        return value

    def optional_snowflake(self, name: str) -> int | None:
        value, given = self._raw(name)
        if not given:
            return None
        if not value.isdigit() or int(value) <= 0:
            self._fail(
                name,
                f"{value!r} is not a server id; enable Developer Mode in Discord, right-click "
                "the server -> Copy Server ID, or leave it empty for global commands",
            )
            return None
        return int(value)

    def integer(self, name: str, *, minimum: int, maximum: int | None = None) -> int:
        value = self._value(name)
        try:
            number = int(value)
        except ValueError:
            self._fail(name, f"{value!r} is not a whole number; set e.g. {name}={DEFAULTS[name]}")
            return int(DEFAULTS[name])
        if number < minimum:
            self._fail(
                name,
                f"{number} is below the minimum {minimum}; "
                f"set a value >= {minimum}{self._default_hint(name)}",
            )
            return int(DEFAULTS[name])
        if maximum is not None and number > maximum:
            self._fail(
                name,
                f"{number} is above the maximum {maximum}; "
                f"set a value <= {maximum}{self._default_hint(name)}",
            )
            return int(DEFAULTS[name])
        return number

    def number(self, name: str, *, minimum: float) -> float:
        value = self._value(name)
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if number != number or number in (float("inf"), float("-inf")):
            self._fail(name, f"{value!r} is not a number of seconds; set e.g. {name}={DEFAULTS[name]}")
            return float(DEFAULTS[name])
        if number < minimum:
            self._fail(
                name,
                f"{value} is below the minimum {minimum:g}; Discord rate-limits message edits, "
                f"set a value >= {minimum:g}{self._default_hint(name)}",
            )
            return float(DEFAULTS[name])
        return number

    def boolean(self, name: str) -> bool:
        value = self._value(name).lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        self._fail(name, f"{value!r} is not true or false; set {name}=true or {name}=false")
        return DEFAULTS[name] in _TRUE

    def engine_batch(self, name: str) -> int | None:
        """ENGINE_BATCH: `auto` (None: the engine's default, `--batch auto`), or how many
        jobs at once. Checked here too, so that a typo is told with the other settings
        rather than as an engine that does not start."""
        value = self._value(name)
        if value.lower() == "auto":
            return None
        try:
            number = int(value)
        except ValueError:
            number = 0
        if not 1 <= number <= MAX_BATCH:
            self._fail(
                name,
                f"{value!r} is not auto or a whole number from 1 to {MAX_BATCH}; set "
                f"{name}=auto for the engine's default ({AUTO_BATCH_CUDA} on a GPU, "
                f"{AUTO_BATCH_CPU} on the CPU), {name}=1 to run one image at a time, or e.g. "
                f"{name}=4 to optimise up to 4 images of one size together",
            )
            return None
        return number

    def compile_mode(self, name: str) -> CompileMode:
        value = self._value(name)
        mode = _COMPILE_MODES.get(value.lower())
        if mode is None:
            self._fail(
                name,
                f"{value!r} is not auto, on or off; set {name}=auto to compile the engine's "
                f"steps on a GPU only (the default), {name}=on to compile on any device, or "
                f"{name}=off never to compile",
            )
            return "auto"
        return mode
    def engine_backend(self, name: str) -> EngineBackend:
        value = self.choice(name, ENGINE_BACKENDS, lower=True)
        return "redis" if value == "redis" else "local"

    def redis_url(self, name: str, *, needed: bool) -> RedisTarget | None:
        value, given = self._raw(name)
        if not given:
            if needed:
                self._fail(name, "not set, and ENGINE_BACKEND=redis needs it: set "
                                 f"{name}=redis://USER:PASSWORD@HOST:6379/0")
            return None
        try:
            return parse_redis_url(value)
        except RedisUrlError as error:  # its message never holds the password
            self._fail(name, str(error))
            return None

    def redis_prefix(self, name: str) -> str:
        value = self._value(name)
        try:
            return check_prefix(value)
        except LayoutError as error:
            self._fail(name, str(error))
            return DEFAULTS[name]

    def engine_devices(self, name: str) -> tuple[str, ...]:
        """ENGINE_DEVICES: the devices `--device` takes one at a time, minus `auto`, which
        could name the same GPU twice. Checked here so that a typo is told at start-up
        with the other settings, not as an engine that cannot start."""
        value, given = self._raw(name)
        if not given:
            return ()
        devices = [part.strip().lower() for part in value.split(",")]
        if any(not device for device in devices):
            self._fail(name, f"{value!r} has an empty entry; list devices separated by "
                             f"commas, e.g. {name}=cuda:0,cuda:1")
            return ()
        bad = [device for device in devices if not re.fullmatch(r"cpu|cuda(:\d{1,3})?", device)]
        if bad:
            self._fail(name, f"{', '.join(map(repr, bad))} is not a device; list cpu, cuda or "
                             f"cuda:N (N the GPU's number, from 0), e.g. {name}=cuda:0,cuda:1, "
                             f"or leave {name} empty for one engine on DEVICE")
            return ()
        # cuda is cuda:0 to torch: the two would load the same GPU twice.
        gpus = ["cuda:0" if device == "cuda" else device for device in devices]
        repeated = sorted({d for d, gpu in zip(devices, gpus) if gpus.count(gpu) > 1})
        if repeated:
            self._fail(name, f"{', '.join(repeated)} named more than once (cuda is cuda:0); "
                             "list each device once: one engine runs on each")
            return ()
        return tuple(devices)

    def devices_are_local(self, devices: tuple[str, ...], backend: EngineBackend) -> None:
        if devices and backend == "redis":
            self._fail("ENGINE_DEVICES",
                       "is set, but ENGINE_BACKEND=redis starts no engine here; leave "
                       "ENGINE_DEVICES empty and run one remote worker per GPU "
                       "(`vqgan-clip worker --redis --device cuda:N`), or set ENGINE_BACKEND=local")

    def device(self, name: str) -> Device:
        return _DEVICE_NAMES[self.choice(name, DEVICES, lower=True)]

    def choice(self, name: str, options: tuple[str, ...], *, lower: bool) -> str:
        value = self._value(name)
        value = value.lower() if lower else value.upper()
        if value not in options:
            self._fail(
                name,
                f"{self._value(name)!r} is not one of {', '.join(options)}; "
                f"set e.g. {name}={DEFAULTS[name]}",
            )
            return DEFAULTS[name]
        return value

    def size(self, name: str) -> tuple[int, int]:
        value = self._value(name)
        default = _parse_size(DEFAULTS[name])
        match = re.fullmatch(r"(\d+)\s*[xX×]\s*(\d+)", value)
        if not match:
            self._fail(name, f"{value!r} is not a size; write WIDTHxHEIGHT, e.g. {name}={DEFAULTS[name]}")
            return default
        width, height = int(match[1]), int(match[2])
        bad = [s for s in (width, height) if s % SIZE_MULTIPLE or not MIN_SIDE <= s <= MAX_SIDE]
        if bad:
            fixed = "x".join(str(_nearest_side(s)) for s in (width, height))
            self._fail(
                name,
                f"{value!r}: each side must be a multiple of {SIZE_MULTIPLE} between {MIN_SIDE} "
                f"and {MAX_SIDE} (the VQGAN works in {SIZE_MULTIPLE}-pixel blocks); try {name}={fixed}",
            )
            return default
        return (width, height)

    def directory(self, name: str) -> Path:
        path = Path(self._value(name)).expanduser()
        if path.exists() and not path.is_dir():
            self._fail(name, f"{str(path)!r} exists but is not a directory; point {name} at a directory")
        return path

    def file_path(self, name: str) -> Path:
        path = Path(self._value(name)).expanduser()
        if path.is_dir():
            self._fail(
                name, f"{str(path)!r} is a directory; {name} must be a file path, e.g. {DEFAULTS[name]}"
            )
        return path

    def vqgan_files(self) -> tuple[Path | None, Path | None]:
        """VQGAN_CONFIG and VQGAN_CHECKPOINT: both or neither, and both existing files
        (nothing downloads them, so a missing one can only be a typo)."""
        config, config_given = self._raw("VQGAN_CONFIG")
        checkpoint, checkpoint_given = self._raw("VQGAN_CHECKPOINT")
        if config_given != checkpoint_given:
            missing = "VQGAN_CHECKPOINT" if config_given else "VQGAN_CONFIG"
            given = "VQGAN_CONFIG" if config_given else "VQGAN_CHECKPOINT"
            self._fail(
                missing,
                f"{given} is set but {missing} is not; set both (the .yaml and the .ckpt of "
                "one model) or neither (to use VQGAN_MODEL)",
            )
            return None, None
        if not config_given:
            return None, None
        paths = []
        for name, value, suffix in (
            ("VQGAN_CONFIG", config, ".yaml"),
            ("VQGAN_CHECKPOINT", checkpoint, ".ckpt"),
        ):
            path = Path(value).expanduser()
            if not path.is_file():
                self._fail(name, f"{str(path)!r} is not a file; point {name} at the model's {suffix} file")
            paths.append(path)
        return paths[0], paths[1]

    def clip_path(self, value: str, model_dir: Path) -> None:
        """A CLIP_MODEL path must exist, as given or (a bare file name) inside MODEL_DIR,
        the two places engine.registry.resolve_clip looks."""
        if not clip_name_is_path(value):
            return
        path = Path(value).expanduser()
        if path.is_file() or (path.name == value and (model_dir / value).is_file()):
            return
        self._fail(
            "CLIP_MODEL",
            f"{value!r} is not a file (looked in the working directory and MODEL_DIR); give a "
            f"model name such as {DEFAULTS['CLIP_MODEL']} or the path of an existing .pt file",
        )

    def not_above(self, low: str, low_value: int, high: str, high_value: int) -> None:
        if low in self._failed or high in self._failed:
            return
        if low_value > high_value:
            self._fail(low, f"{low_value} is above {high}={high_value}; lower {low} or raise {high}")

    def size_not_above(self, default: tuple[int, int], maximum: tuple[int, int]) -> None:
        if "DEFAULT_SIZE" in self._failed or "MAX_SIZE" in self._failed:
            return
        (dw, dh), (mw, mh) = default, maximum
        if dw > mw or dh > mh:
            self._fail(
                "DEFAULT_SIZE",
                f"{dw}x{dh} is larger than MAX_SIZE={mw}x{mh} in width or height; "
                "lower DEFAULT_SIZE or raise MAX_SIZE",
            )


def _parse_size(text: str) -> tuple[int, int]:
    width, height = text.lower().split("x")
    return int(width), int(height)


def _nearest_side(side: int) -> int:
    """The multiple of SIZE_MULTIPLE nearest to `side`, clamped to the allowed range."""
    rounded = round(side / SIZE_MULTIPLE) * SIZE_MULTIPLE
    return min(max(rounded, MIN_SIDE), MAX_SIDE)


def format_settings(settings: Settings) -> str:
    """One `NAME=value` line per setting, token and Redis password masked: what
    `--check-config` prints."""
    lines = []
    for name in SETTING_NAMES:
        attr = name.lower()
        value = getattr(settings, attr)
        if name == "DISCORD_TOKEN":
            shown = "<hidden>"
        elif value is None and name == "ENGINE_BATCH":
            shown = "auto"
        elif name == "ENGINE_DEVICES":
            shown = ",".join(value)
        elif isinstance(value, RedisTarget):
            shown = value.shown()  # the password as ***
        elif value is None:
            shown = ""
        elif isinstance(value, tuple):
            shown = f"{value[0]}x{value[1]}"
        elif isinstance(value, bool):
            shown = "true" if value else "false"
        elif isinstance(value, float):
            shown = f"{value:g}"
        else:
            shown = str(value)
        lines.append(f"{name}={shown}")
    return "\n".join(lines)
