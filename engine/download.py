"""Resumable, verified model downloads with a progress bar.

Standard library (urllib) plus tqdm, so the bot process can fetch the configured models
before it starts without importing torch.

The one rule: a file only ever appears under its final name complete and verified. Bytes go
to `NAME.part`; an interrupted download keeps that file and the next run resumes it with an
HTTP Range request; only after the size and SHA-256 (where known) match is it renamed with
`os.replace`, which is atomic on one file system. A loader that finds `NAME.ckpt` can
therefore trust it is not half a download.

Every failure is an EngineError whose message names the file, where it was fetched from,
and the full path to place it at by hand, because the person reading it may be offline.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Union

from tqdm import tqdm

from engine import __version__
from engine.errors import EngineError, ModelFileError
from engine.registry import (
    KNOWN_MODELS,
    KnownModel,
    ModelFile,
    known_names,
    resolve_clip,
    resolve_vqgan,
)

log = logging.getLogger(__name__)

#: Seconds to wait for the server to connect or send the next bytes (not the whole download).
DEFAULT_TIMEOUT = 60.0
#: Read size: large enough that Python overhead is negligible, small enough for a live bar.
CHUNK_SIZE = 1 << 20
PART_SUFFIX = ".part"

ModelRef = Union[str, KnownModel]


class _StartOver(Exception):
    """The .part file cannot be resumed (stale or from another version); it was deleted."""


def part_path(final: Path) -> Path:
    """Where the bytes of `final` accumulate until they are verified."""
    return final.with_name(final.name + PART_SUFFIX)


def download_file(
    model_file: ModelFile,
    dest_dir: Path,
    *,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    model_name: str | None = None,
) -> Path:
    """Fetch `model_file` into `dest_dir/filename` and return that path.

    Resumes `filename.part` if one is there (starting over when the server ignores the
    Range request), verifies size and SHA-256 where known, then renames atomically. Always
    fetches, even when the final file exists (that check is `ensure_models`' job).
    `model_name` only makes error messages name the `vqgan-clip download` command to rerun.
    Raises EngineError with a message that says how to place the file by hand.
    """
    dest_dir = Path(dest_dir)
    final = (dest_dir / model_file.filename).absolute()
    part = part_path(final)
    scheme = urllib.parse.urlsplit(model_file.url).scheme
    if scheme not in ("http", "https"):
        # urllib would also open file:// and ftp:// URLs; a model source is a web address.
        raise EngineError(
            f"cannot download {model_file.filename}: {model_file.url!r} is not an http(s) URL; "
            f"place the file at {final} yourself"
        )
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise EngineError(f"cannot create the model folder {dest_dir.absolute()}: {error}") from error

    log.info("downloading %s from %s to %s", model_file.filename, model_file.url, final)
    try:
        digest = _fetch(model_file, part, final, progress, timeout, model_name)
    except _StartOver:
        digest = _fetch(model_file, part, final, progress, timeout, model_name)
    _verify(model_file, part, final, digest, model_name)
    try:
        os.replace(part, final)
    except OSError as error:
        raise EngineError(f"cannot move {part} to {final}: {error}") from error
    log.info("downloaded %s", final)
    return final


def _retry_hint(model_file: ModelFile, final: Path, model_name: str | None) -> str:
    again = f"run `vqgan-clip download {model_name}` again" if model_name else "try again"
    return (
        f"Check the network connection and {again}, or download {model_file.url} "
        f"yourself and place it at {final}"
    )


def _fetch_error(model_file: ModelFile, final: Path, reason: str, model_name: str | None) -> EngineError:
    return EngineError(
        f"could not download {model_file.filename} from {model_file.url}: {reason}. "
        f"{_retry_hint(model_file, final, model_name)}"
    )


def _describe(error: BaseException, timeout: float) -> str:
    """A short human reason for a network failure (urllib nests the real one in .reason)."""
    reason = getattr(error, "reason", error)
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return f"no answer within {timeout:g} s"
    text = str(reason) or type(reason).__name__
    return text


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from a Content-Range header; None for what is not stated."""
    if not header:
        return None, None
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", header)
    if not match:
        return None, None
    start = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(2)) if match.group(2) != "*" else None
    return start, total


def _hash_file(path: Path, hasher: "hashlib._Hash") -> None:
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK_SIZE):
            hasher.update(chunk)


def _discard(part: Path) -> None:
    try:
        part.unlink()
    except FileNotFoundError:
        pass


def _fetch(
    model_file: ModelFile,
    part: Path,
    final: Path,
    progress: bool,
    timeout: float,
    model_name: str | None,
) -> str | None:
    """Append the missing bytes to `part`; return its SHA-256 hex when one is expected."""
    offset = part.stat().st_size if part.is_file() else 0
    if model_file.size is not None and offset > model_file.size:
        _discard(part)  # longer than the real file: not a prefix of it
        offset = 0
    hasher = hashlib.sha256() if model_file.sha256 else None
    if model_file.size is not None and offset == model_file.size:
        # A previous run got every byte but stopped before verifying: nothing to fetch.
        if hasher:
            _hash_file(part, hasher)
        return hasher.hexdigest() if hasher else None

    headers = {
        "User-Agent": f"vqgan-clip-bot/{__version__} (+python-urllib)",
        # A compressed body would not match the size, the checksum or the byte offsets.
        "Accept-Encoding": "identity",
    }
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(model_file.url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        error.close()
        if error.code == 416 and offset:
            _, total = _content_range(error.headers.get("Content-Range"))
            if total == offset:  # the .part already holds the whole file
                if hasher:
                    _hash_file(part, hasher)
                return hasher.hexdigest() if hasher else None
            log.warning("server refused to resume %s; starting over", model_file.filename)
            _discard(part)
            raise _StartOver from None
        raise _fetch_error(
            model_file, final, f"the server answered HTTP {error.code} {error.reason}", model_name
        ) from error
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as error:
        raise _fetch_error(model_file, final, _describe(error, timeout), model_name) from error

    with response:
        length_header = response.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.isdigit() else None
        start, total = _content_range(response.headers.get("Content-Range"))
        if response.status == 206 and offset:
            if start is not None and start != offset:
                log.warning("server resumed %s at the wrong offset; starting over", model_file.filename)
                _discard(part)
                raise _StartOver
            mode = "ab"
        else:
            if offset:
                log.info("server ignored the Range request for %s; starting over", model_file.filename)
            offset, mode, total = 0, "wb", length
        if total is None and length is not None:
            total = offset + length
        if model_file.size is not None and total is not None and total != model_file.size:
            # Refuse before transferring a gigabyte of the wrong file.
            _discard(part)
            raise ModelFileError(
                f"{model_file.filename} at {model_file.url} is {total} bytes, but "
                f"{model_file.size} bytes were expected (the file may have changed upstream); "
                f"nothing was saved. Place a correct copy at {final} yourself"
            )
        if hasher and offset:
            _hash_file(part, hasher)
        received = _stream(response, part, mode, offset, total or model_file.size, hasher,
                           progress, timeout, model_file, final, model_name)
        if length is not None and received < length:
            raise _interrupted(model_file, part, final, offset + received,
                               f"the connection closed after {received} of {length} bytes",
                               model_name)
    return hasher.hexdigest() if hasher else None


def _interrupted(model_file: ModelFile, part: Path, final: Path, have: int, reason: str,
                 model_name: str | None) -> EngineError:
    again = f"`vqgan-clip download {model_name}`" if model_name else "the download"
    return EngineError(
        f"the download of {model_file.filename} from {model_file.url} was interrupted "
        f"({reason}). The {have} bytes received are kept in {part}: run {again} again to "
        f"resume, or download the file yourself and place it at {final}"
    )


def _stream(
    response: http.client.HTTPResponse,
    part: Path,
    mode: str,
    offset: int,
    total: int | None,
    hasher: "hashlib._Hash | None",
    progress: bool,
    timeout: float,
    model_file: ModelFile,
    final: Path,
    model_name: str | None,
) -> int:
    """Copy the response body to `part`; return the number of bytes written."""
    received = 0
    disable = not progress or not _is_tty(sys.stderr)
    try:
        out: IO[bytes] = open(part, mode)  # noqa: SIM115 (closed below, errors mapped)
    except OSError as error:
        raise EngineError(f"cannot write {part}: {error}") from error
    with out, tqdm(
        total=total,
        initial=offset,
        desc=model_file.filename,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=disable,
        leave=True,
    ) as bar:
        while True:
            try:
                chunk = response.read(CHUNK_SIZE)
            except (OSError, http.client.HTTPException) as error:
                out.flush()
                raise _interrupted(model_file, part, final, offset + received,
                                   _describe(error, timeout), model_name) from error
            if not chunk:
                break
            try:
                out.write(chunk)
            except OSError as error:
                raise EngineError(
                    f"cannot write {part}: {error} (is the disk full? {model_file.filename} "
                    f"needs {_human(model_file.size)})"
                ) from error
            if hasher:
                hasher.update(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    return received


def _verify(model_file: ModelFile, part: Path, final: Path, digest: str | None,
            model_name: str | None) -> None:
    """Check the finished .part against what the registry knows; delete it if it is wrong."""
    actual = part.stat().st_size
    if model_file.size is not None and actual < model_file.size:
        raise _interrupted(model_file, part, final, actual,
                           f"got {actual} of {model_file.size} bytes", model_name)
    if model_file.size is not None and actual > model_file.size:
        _discard(part)
        raise ModelFileError(
            f"{model_file.filename} downloaded from {model_file.url} is {actual} bytes, but "
            f"{model_file.size} were expected; the download was deleted. "
            f"{_retry_hint(model_file, final, model_name)}"
        )
    if model_file.sha256 is not None and digest != model_file.sha256:
        _discard(part)
        raise ModelFileError(
            f"checksum mismatch: {model_file.filename} downloaded from {model_file.url} has "
            f"SHA-256 {digest}, but {model_file.sha256} was expected; the damaged download "
            f"was deleted. {_retry_hint(model_file, final, model_name)}"
        )


def _is_tty(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return callable(isatty) and bool(isatty())
    except ValueError:  # a closed stream
        return False


def _human(size: int | None) -> str:
    if size is None:
        return "an unknown amount of space"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def file_status(model_file: ModelFile, model_dir: Path) -> str:
    """'present', 'missing', 'partial (N%)' or 'wrong size': what `--list` shows per file."""
    final = Path(model_dir) / model_file.filename
    if final.is_file():
        if model_file.size is not None and final.stat().st_size != model_file.size:
            return "wrong size"
        return "present"
    part = part_path(final)
    if part.is_file():
        have = part.stat().st_size
        if model_file.size:
            return f"partial ({min(100, have * 100 // model_file.size)}%)"
        return f"partial ({_human(have)})"
    return "missing"


def is_present(model_file: ModelFile, model_dir: Path) -> bool:
    """The final file exists and, where the size is known, has it.

    A file of the wrong size is a leftover of some other tool's interrupted download (ours
    never leaves one); counting it as missing lets `ensure_models` replace it.
    """
    return file_status(model_file, model_dir) == "present"


def _custom_present(name: str, model_dir: Path) -> bool:
    for resolve in (resolve_vqgan, resolve_clip):
        try:
            resolve(name, model_dir)
            return True
        except ModelFileError:
            pass
    return False


def _lookup(ref: ModelRef, model_dir: Path) -> KnownModel | None:
    """The registry entry for `ref`; None for a custom model already in `model_dir`."""
    if isinstance(ref, KnownModel):
        return ref
    if ref in KNOWN_MODELS:
        return KNOWN_MODELS[ref]
    if _custom_present(ref, model_dir):
        return None
    raise EngineError(
        f"unknown model {ref!r}: known models are {', '.join(known_names())}. A custom model "
        f"cannot be downloaded; place its files (NAME.yaml + NAME.ckpt for a VQGAN, NAME.pt "
        f"for CLIP) in {Path(model_dir).absolute()}"
    )


def missing_files(names: Iterable[ModelRef], model_dir: Path) -> list[tuple[KnownModel, ModelFile]]:
    """The files of the named models that are not (correctly) in `model_dir`, each once.

    Names may be registry names, KnownModel objects (tests point these at a local server),
    or custom models whose files are already present (nothing to fetch). An unknown name
    with no files raises EngineError listing the known names.
    """
    missing: dict[str, tuple[KnownModel, ModelFile]] = {}
    for ref in names:
        model = _lookup(ref, Path(model_dir))
        if model is None:
            continue
        for file in model.files:
            if file.filename not in missing and not is_present(file, model_dir):
                missing[file.filename] = (model, file)
    return list(missing.values())


def ensure_models(
    names: Iterable[ModelRef],
    model_dir: Path,
    *,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[Path]:
    """Download whatever files of the named models are missing; return the paths fetched.

    Present files are not touched and cost no request, so the bot can call this on every
    start. Stops at the first failure (EngineError) leaving any .part to resume next time;
    when other files are missing too, the error lists each one with its URL and the path
    to place it at, so an operator without network can fix everything in one go.
    """
    model_dir = Path(model_dir)
    todo = missing_files(list(names), model_dir)
    fetched: list[Path] = []
    for index, (model, file) in enumerate(todo):
        try:
            fetched.append(
                download_file(file, model_dir, progress=progress, timeout=timeout,
                              model_name=model.name)
            )
        except EngineError as error:
            others = todo[index + 1:]
            if not others:
                raise
            listing = "\n".join(
                f"  {other.url}\n    -> {model_dir.resolve() / other.filename}"
                for _, other in others
            )
            raise type(error)(f"{error}\nAlso missing (download each and place it as shown):\n"
                              f"{listing}") from error
    return fetched
