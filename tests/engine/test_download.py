"""Downloads against a local HTTP server on 127.0.0.1: never the network."""

from __future__ import annotations

import hashlib
import importlib.util
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import engine.cli
from engine.download import (
    download_file,
    ensure_models,
    file_status,
    missing_files,
    part_path,
)
from engine.errors import EngineError
from engine.registry import KnownModel, ModelFile

PAYLOAD = bytes(range(256)) * 64 + b"tail"  # 16 KiB + 4: big enough to split, small to send


@dataclass
class ServerState:
    """What the test server serves and how it misbehaves, and what it saw."""

    files: dict[str, bytes] = field(default_factory=dict)
    fail_status: int | None = None  # answer every request with this status
    ignore_range: bool = False  # answer Range requests with the whole file (200)
    truncate_at: int | None = None  # announce the full length, send this many bytes, hang up
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range)
    bytes_sent: int = 0


class _Handler(BaseHTTPRequestHandler):
    state: ServerState  # set on a subclass per server

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        state = self.state
        range_header = self.headers.get("Range")
        state.requests.append((self.path, range_header))
        if state.fail_status is not None:
            self.send_error(state.fail_status)
            return
        body = state.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if range_header and not state.ignore_range:
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        chunk = body[start:]
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        if state.truncate_at is not None:
            chunk = chunk[: state.truncate_at]
            self.close_connection = True
        state.bytes_sent += len(chunk)  # before writing: the client may finish first
        self.wfile.write(chunk)


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    """A threaded HTTP server on a free loopback port: (base URL, its state)."""
    state = ServerState()
    handler = type("Handler", (_Handler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def served_file(base: str, state: ServerState, name: str = "model.ckpt",
                data: bytes = PAYLOAD, *, checksum: bool = True, size: bool = True) -> ModelFile:
    state.files[f"/{name}"] = data
    return ModelFile(name, f"{base}/{name}", len(data) if size else None,
                     sha(data) if checksum else None)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- download_file ------------------------------------------------------------------------


def test_full_download_writes_verified_file(server, tmp_path):
    base, state = server
    file = served_file(base, state)
    path = download_file(file, tmp_path, progress=False)
    assert path == (tmp_path / "model.ckpt").absolute()
    assert path.read_bytes() == PAYLOAD
    assert not part_path(path).exists()
    assert state.requests == [("/model.ckpt", None)]


def test_download_without_known_size_or_checksum_still_completes(server, tmp_path):
    base, state = server
    file = served_file(base, state, checksum=False, size=False)
    assert download_file(file, tmp_path, progress=False).read_bytes() == PAYLOAD


def test_download_creates_missing_model_dir(server, tmp_path):
    base, state = server
    file = served_file(base, state)
    path = download_file(file, tmp_path / "a" / "b", progress=False)
    assert path.read_bytes() == PAYLOAD


def test_resume_requests_only_the_rest_of_a_partial_file(server, tmp_path):
    base, state = server
    file = served_file(base, state)
    have = 5000
    part_path(tmp_path / "model.ckpt").write_bytes(PAYLOAD[:have])
    path = download_file(file, tmp_path, progress=False)
    assert state.requests == [("/model.ckpt", f"bytes={have}-")]
    assert state.bytes_sent == len(PAYLOAD) - have
    assert path.read_bytes() == PAYLOAD
    assert not part_path(path).exists()


def test_server_ignoring_range_restarts_and_gives_the_right_file(server, tmp_path):
    base, state = server
    state.ignore_range = True
    file = served_file(base, state)
    part_path(tmp_path / "model.ckpt").write_bytes(PAYLOAD[:5000])
    path = download_file(file, tmp_path, progress=False)
    assert state.requests[0][1] == "bytes=5000-"  # it asked to resume...
    assert state.bytes_sent == len(PAYLOAD)  # ...got everything, and did not append it
    assert path.read_bytes() == PAYLOAD


def test_complete_part_file_is_verified_without_a_request(server, tmp_path):
    base, state = server
    file = served_file(base, state)
    part_path(tmp_path / "model.ckpt").write_bytes(PAYLOAD)
    path = download_file(file, tmp_path, progress=False)
    assert state.requests == []
    assert path.read_bytes() == PAYLOAD


def test_complete_part_file_of_unknown_size_finishes_on_416(server, tmp_path):
    base, state = server
    file = served_file(base, state, size=False)
    part_path(tmp_path / "model.ckpt").write_bytes(PAYLOAD)
    path = download_file(file, tmp_path, progress=False)
    assert state.requests == [("/model.ckpt", f"bytes={len(PAYLOAD)}-")]
    assert path.read_bytes() == PAYLOAD


def test_interrupted_transfer_keeps_part_and_next_call_resumes(server, tmp_path):
    base, state = server
    file = served_file(base, state)
    state.truncate_at = 6000
    with pytest.raises(EngineError, match="interrupted") as caught:
        download_file(file, tmp_path, progress=False)
    final = tmp_path / "model.ckpt"
    assert not final.exists()
    assert part_path(final).read_bytes() == PAYLOAD[:6000]
    assert str(part_path(final).absolute()) in str(caught.value)

    state.truncate_at = None
    download_file(file, tmp_path, progress=False)
    assert state.requests[-1] == ("/model.ckpt", "bytes=6000-")
    assert final.read_bytes() == PAYLOAD


def test_checksum_mismatch_raises_and_leaves_no_file(server, tmp_path):
    base, state = server
    good = served_file(base, state)
    bad = ModelFile(good.filename, good.url, good.size, sha(b"something else"))
    with pytest.raises(EngineError, match="checksum mismatch") as caught:
        download_file(bad, tmp_path, progress=False)
    assert str((tmp_path / "model.ckpt").absolute()) in str(caught.value)
    assert list(tmp_path.iterdir()) == []  # neither the final file nor a .part


def test_corrupt_partial_file_fails_the_checksum_and_is_deleted(server, tmp_path):
    base, state = server
    file = served_file(base, state)
    part = part_path(tmp_path / "model.ckpt")
    part.write_bytes(b"\xff" * 5000)  # not a prefix of the real file
    with pytest.raises(EngineError, match="checksum mismatch"):
        download_file(file, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_server_size_differing_from_registry_is_refused_before_transfer(server, tmp_path):
    base, state = server
    file = served_file(base, state)
    state.files["/model.ckpt"] = PAYLOAD + b"extra"
    with pytest.raises(EngineError, match="bytes were expected"):
        download_file(file, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_http_500_names_file_url_and_where_to_place_it(server, tmp_path):
    base, state = server
    file = served_file(base, state)
    state.fail_status = 500
    with pytest.raises(EngineError) as caught:
        download_file(file, tmp_path, progress=False, model_name="some_model")
    message = str(caught.value)
    assert "model.ckpt" in message
    assert file.url in message
    assert "HTTP 500" in message
    assert str((tmp_path / "model.ckpt").absolute()) in message
    assert "vqgan-clip download some_model" in message
    assert not (tmp_path / "model.ckpt").exists()


def test_http_404_is_a_clear_error(server, tmp_path):
    base, _ = server
    file = ModelFile("gone.ckpt", f"{base}/gone.ckpt", None, None)
    with pytest.raises(EngineError, match="HTTP 404"):
        download_file(file, tmp_path, progress=False)
    assert not (tmp_path / "gone.ckpt").exists()


def test_connection_refused_says_where_to_place_file(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/model.ckpt"
    file = ModelFile("model.ckpt", url, 10, None)
    with pytest.raises(EngineError) as caught:
        download_file(file, tmp_path, progress=False)
    message = str(caught.value)
    assert "could not download model.ckpt" in message
    assert url in message
    assert "refused" in message.lower()
    assert str((tmp_path / "model.ckpt").absolute()) in message
    assert list(tmp_path.iterdir()) == []


def test_silent_server_times_out_with_clear_error(tmp_path):
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/model.ckpt"
        with pytest.raises(EngineError, match=r"no answer within 0\.3 s"):
            download_file(ModelFile("model.ckpt", url), tmp_path, progress=False, timeout=0.3)
    assert not (tmp_path / "model.ckpt").exists()


def test_non_http_url_is_refused(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"x")
    file = ModelFile("model.ckpt", secret.as_uri())
    with pytest.raises(EngineError, match="not an http"):
        download_file(file, tmp_path / "models", progress=False)


def test_download_replaces_existing_file_atomically(server, tmp_path):
    base, state = server
    file = served_file(base, state)
    (tmp_path / "model.ckpt").write_bytes(b"old")
    download_file(file, tmp_path, progress=False)
    assert (tmp_path / "model.ckpt").read_bytes() == PAYLOAD


# --- missing_files / ensure_models ---------------------------------------------------------


def two_file_model(base: str, state: ServerState) -> KnownModel:
    yaml = served_file(base, state, "loop.yaml", b"model: {}\n")
    ckpt = served_file(base, state, "loop.ckpt")
    return KnownModel("loop", "vqgan", "test model", (yaml, ckpt))


def test_ensure_models_downloads_missing_files(server, tmp_path):
    base, state = server
    model = two_file_model(base, state)
    fetched = ensure_models([model], tmp_path, progress=False)
    assert [p.name for p in fetched] == ["loop.yaml", "loop.ckpt"]
    assert (tmp_path / "loop.ckpt").read_bytes() == PAYLOAD


def test_ensure_models_skips_present_files_without_a_request(server, tmp_path):
    base, state = server
    model = two_file_model(base, state)
    (tmp_path / "loop.yaml").write_bytes(b"model: {}\n")
    (tmp_path / "loop.ckpt").write_bytes(PAYLOAD)
    assert ensure_models([model], tmp_path, progress=False) == []
    assert state.requests == []


def test_ensure_models_fetches_only_the_missing_file(server, tmp_path):
    base, state = server
    model = two_file_model(base, state)
    (tmp_path / "loop.yaml").write_bytes(b"model: {}\n")
    fetched = ensure_models([model], tmp_path, progress=False)
    assert [p.name for p in fetched] == ["loop.ckpt"]
    assert [path for path, _ in state.requests] == ["/loop.ckpt"]


def test_ensure_models_offline_error_lists_every_missing_file_and_where_it_goes(tmp_path):
    base = f"http://127.0.0.1:{closed_port()}"
    yaml = ModelFile("loop.yaml", f"{base}/loop.yaml")
    ckpt = ModelFile("loop.ckpt", f"{base}/loop.ckpt")
    clip = ModelFile("tiny.pt", f"{base}/tiny.pt")
    models = [KnownModel("loop", "vqgan", "test model", (yaml, ckpt)),
              KnownModel("tiny", "clip", "test model", (clip,))]
    with pytest.raises(EngineError) as caught:
        ensure_models(models, tmp_path, progress=False)
    message = str(caught.value)
    assert "could not download loop.yaml" in message
    for later in (ckpt, clip):
        assert later.url in message
        assert str((tmp_path / later.filename).resolve()) in message
    assert list(tmp_path.iterdir()) == []


def test_ensure_models_error_for_the_last_missing_file_lists_nothing_more(server, tmp_path):
    base, state = server
    model = two_file_model(base, state)
    (tmp_path / "loop.yaml").write_bytes(b"model: {}\n")
    state.fail_status = 500
    with pytest.raises(EngineError) as caught:
        ensure_models([model], tmp_path, progress=False)
    assert "Also missing" not in str(caught.value)


def test_missing_files_counts_wrong_size_file_as_missing(server, tmp_path):
    base, state = server
    model = two_file_model(base, state)
    (tmp_path / "loop.yaml").write_bytes(b"model: {}\n")
    (tmp_path / "loop.ckpt").write_bytes(PAYLOAD[:100])  # someone else's cut-off download
    assert [f.filename for _, f in missing_files([model], tmp_path)] == ["loop.ckpt"]
    assert file_status(model.files[1], tmp_path) == "wrong size"


def test_missing_files_accepts_present_custom_models(tmp_path):
    (tmp_path / "tiny_vqgan.yaml").write_text("model: {}\n")
    (tmp_path / "tiny_vqgan.ckpt").write_bytes(b"x")
    (tmp_path / "tiny_clip.pt").write_bytes(b"x")
    assert missing_files(["tiny_vqgan", "tiny_clip"], tmp_path) == []


def test_missing_files_lists_known_model_files(tmp_path):
    names = [f.filename for _, f in missing_files(["vqgan_imagenet_f16_16384", "ViT-B/32"], tmp_path)]
    assert names == ["vqgan_imagenet_f16_16384.yaml", "vqgan_imagenet_f16_16384.ckpt", "ViT-B-32.pt"]


def test_unknown_absent_model_is_an_error_listing_known_names(tmp_path):
    with pytest.raises(EngineError, match="vqgan_imagenet_f16_16384") as caught:
        missing_files(["no_such_model"], tmp_path)
    assert "no_such_model" in str(caught.value)


def test_file_status_reports_partial_progress(tmp_path):
    file = ModelFile("m.ckpt", "http://127.0.0.1/m.ckpt", 200, None)
    assert file_status(file, tmp_path) == "missing"
    part_path(tmp_path / "m.ckpt").write_bytes(b"x" * 50)
    assert file_status(file, tmp_path) == "partial (25%)"


# --- CLI -------------------------------------------------------------------------------


@pytest.fixture
def cli_main(monkeypatch):
    """engine.cli.main with only the sub-command modules that exist yet (others are being
    written in parallel; a missing one must not hide this command's behaviour)."""
    present = tuple(m for m in engine.cli.COMMAND_MODULES if importlib.util.find_spec(m))
    monkeypatch.setattr(engine.cli, "COMMAND_MODULES", present)
    return engine.cli.main


def test_cli_download_help_exits_zero(cli_main, capsys):
    with pytest.raises(SystemExit) as caught:
        cli_main(["download", "--help"])
    assert caught.value.code == 0
    assert "--model-dir" in capsys.readouterr().out


def test_cli_list_shows_known_models_and_presence(cli_main, tmp_path, capsys):
    (tmp_path / "ViT-B-32.pt").write_bytes(b"")
    assert cli_main(["download", "--list", "--model-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in ("vqgan_imagenet_f16_16384", "vqgan_imagenet_f16_1024", "wikiart_16384",
                 "vqgan_gumbel_f8_8192", "ViT-B/32", "ViT-B/16"):
        assert name in out
    assert "935 MiB" in out  # the default VQGAN's known size
    assert str(tmp_path.absolute()) in out
    assert "wrong size" in out  # the empty ViT-B-32.pt is not the real file


def test_cli_list_reports_present_model(cli_main, tmp_path, capsys, monkeypatch):
    import engine.registry as registry

    fake = KnownModel("fake", "clip", "test", (ModelFile("fake.pt", "http://127.0.0.1/x", 3),))
    monkeypatch.setitem(registry.KNOWN_MODELS, "fake", fake)
    (tmp_path / "fake.pt").write_bytes(b"abc")
    assert cli_main(["download", "--list", "--model-dir", str(tmp_path)]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("fake"))
    assert "present" in line


def test_cli_unknown_name_exits_1_listing_known(cli_main, tmp_path, capsys):
    assert cli_main(["download", "no_such_model", "--model-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no_such_model" in err and "vqgan_imagenet_f16_16384" in err
    assert list(tmp_path.iterdir()) == []


def test_cli_download_fetches_registry_model(cli_main, server, tmp_path, monkeypatch, capsys):
    import engine.registry as registry

    base, state = server
    model = two_file_model(base, state)
    monkeypatch.setitem(registry.KNOWN_MODELS, "loop", model)
    assert cli_main(["download", "loop", "--model-dir", str(tmp_path), "--no-progress"]) == 0
    assert (tmp_path / "loop.ckpt").read_bytes() == PAYLOAD
    assert cli_main(["download", "loop", "--model-dir", str(tmp_path)]) == 0
    assert "all present" in capsys.readouterr().out
    assert len(state.requests) == 2  # the second run made no request


def test_cli_download_uses_model_dir_from_environment(cli_main, server, tmp_path, monkeypatch):
    import engine.registry as registry

    base, state = server
    monkeypatch.setitem(registry.KNOWN_MODELS, "loop", two_file_model(base, state))
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "env_models"))
    assert cli_main(["download", "loop", "--no-progress"]) == 0
    assert (tmp_path / "env_models" / "loop.yaml").exists()


def test_cli_network_failure_exits_1(cli_main, tmp_path, monkeypatch, capsys):
    import engine.registry as registry

    url = f"http://127.0.0.1:{closed_port()}/x.pt"
    monkeypatch.setitem(registry.KNOWN_MODELS, "dead",
                        KnownModel("dead", "clip", "t", (ModelFile("dead.pt", url),)))
    assert cli_main(["download", "dead", "--model-dir", str(tmp_path)]) == 1
    assert str((tmp_path / "dead.pt").absolute()) in capsys.readouterr().err


def test_bot_side_modules_do_not_import_torch():
    code = (
        "import sys, engine.registry, engine.download, engine.commands.download\n"
        "bad = [m for m in ('torch', 'clip', 'taming', 'kornia', 'discord') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
