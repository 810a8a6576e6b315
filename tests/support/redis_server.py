"""Launch a real, throw-away ``redis-server`` for tests, specs and benchmarks.

:class:`RedisServer` runs ``redis-server`` on loopback, on a free port, in its own temporary
directory, with persistence off. ``stop()`` and ``start()`` may be called repeatedly and keep the
same port and directory, so fault tests can take Redis away and bring it back at the same URL::

    with RedisServer() as server:
        client = redis.asyncio.Redis.from_url(server.url)
        server.stop()      # clients now see connection errors
        server.start()     # same URL answers again (empty: nothing is persisted)

Only the standard library is used, so this module works before any project code is importable.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType

__all__ = ["INSTALL_HINT", "RedisServer", "RedisServerError", "free_port", "redis_answers"]

INSTALL_HINT = (
    "install redis-server (Debian/Ubuntu: `sudo apt-get install -y redis-server`; "
    "macOS: `brew install redis`), or set WSM_TEST_REDIS_URL=redis://host:port/db "
    "to use a Redis you already run"
)


class RedisServerError(RuntimeError):
    """redis-server is missing, would not start, or would not stop."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def redis_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a Redis at host:port answers ``PING`` with ``+PONG`` (raw RESP, no client lib)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process: ``start()``, ``stop()``, ``restart()``, ``close()``.

    The port is chosen once (``port=None``: a free one) and kept across restarts. Data is not
    persisted (``--save "" --appendonly no``): a restarted server starts empty, like a Redis
    that lost its memory. ``close()`` stops the process and removes the temporary directory.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        executable: str | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        exe = executable or shutil.which("redis-server")
        if exe is None:
            raise RedisServerError(f"redis-server is not on PATH: {INSTALL_HINT}")
        self.executable = exe
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.start_timeout = start_timeout
        self._dir = Path(tempfile.mkdtemp(prefix="wsm-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None
        # The running process, shared with the finalizer (which must not hold `self`): a test
        # run that dies or forgets close() must not leave a redis-server behind (weakref.finalize
        # also runs at interpreter exit).
        self._procs: list[subprocess.Popen[bytes]] = []
        self._finalizer = weakref.finalize(self, _kill, self._procs)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        return self._dir / "redis.log"

    def start(self) -> RedisServer:
        """Start the server (no-op if running) and wait until it answers PING."""
        if self.running:
            return self
        command = [
            self.executable,
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self._dir),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        self._proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        self._procs[:] = [self._proc]
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RedisServerError(f"redis-server exited at start:\n{self._log_tail()}")
            if redis_answers(self.host, self.port):
                return self
            time.sleep(0.02)
        self.stop()
        raise RedisServerError(f"redis-server did not answer PING in time:\n{self._log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait until the port is free again."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        self._procs.clear()

    def kill(self) -> None:
        """SIGKILL, no shutdown: models a crashed Redis."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self.stop()

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop and remove the temporary directory. The object cannot be started again."""
        self.stop()
        self._finalizer()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"RedisServer({self.url!r}, {state})"


def _kill(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
