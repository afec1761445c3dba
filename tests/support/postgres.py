"""A real PostgreSQL server for tests and benchmarks: its own data directory, a free port.

The server binaries come from the distribution's packages (``postgresql`` on Debian: found on
``PATH`` or under ``/usr/lib/postgresql/<N>/bin``); ``make dev`` installs them when missing.
PostgreSQL refuses to run as root, so as root the cluster is owned by and run as the
``postgres`` system user the package creates.

``PostgresServer.start(tmp)`` → ``.url`` (``postgresql://quiver@127.0.0.1:PORT/quiver``),
``.stop()``, ``.kill()`` (SIGKILL, for restart tests) and ``.restart()`` on the same port.
``postgres_missing()`` says why a test must skip (no binaries), or None.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.serve import free_port

_RUN_AS = "postgres"


def _bin_dir() -> Path | None:
    found = shutil.which("initdb")
    if found is not None:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


def postgres_missing() -> str | None:
    """Why no PostgreSQL server can be started here, or None when one can."""
    if _bin_dir() is None:
        return "no PostgreSQL server binaries (initdb) on this machine"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam(_RUN_AS)
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
    return None


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", _RUN_AS, "--", *argv]
    return argv


@dataclass
class PostgresServer:
    """One PostgreSQL cluster in ``root``, listening on 127.0.0.1:``port``."""

    root: Path
    port: int
    user: str = "quiver"
    database: str = "quiver"
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    @property
    def data(self) -> Path:
        return self.root / "pgdata"

    @classmethod
    def start(cls, root: Path, port: int | None = None) -> PostgresServer:
        why = postgres_missing()
        if why is not None:
            raise RuntimeError(why)
        root.mkdir(parents=True, exist_ok=True)
        server = cls(root=root, port=port or free_port())
        server._init()
        server._launch()
        server._create_database()
        return server

    def _bin(self, name: str) -> str:
        bin_dir = _bin_dir()
        assert bin_dir is not None
        return str(bin_dir / name)

    def _init(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        (self.root / "sock").mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, _RUN_AS)
            for path in (self.data, self.root / "sock"):
                shutil.chown(path, _RUN_AS)
            # runuser must be able to reach the directory through its parents.
            parent = self.root.parent
            while parent != parent.parent:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    os.chmod(parent, mode | 0o001)
                parent = parent.parent
        subprocess.run(
            _as_server_user(
                [
                    self._bin("initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    self.user,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
        )

    def _launch(self) -> None:
        log = open(self.root / "postgres.log", "ab")  # noqa: SIM115 - owned by the process
        self._proc = subprocess.Popen(
            _as_server_user(
                [
                    self._bin("postgres"),
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"unix_socket_directories={self.root / 'sock'}",
                    "-c",
                    "fsync=off",
                    "-c",
                    "max_connections=200",
                ]
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"postgres exited with {self._proc.returncode}: "
                    + (self.root / "postgres.log").read_text(errors="replace")[-2000:]
                )
            ready = subprocess.run(
                [
                    self._bin("pg_isready"),
                    *("-h", "127.0.0.1", "-p", str(self.port), "-U", self.user),
                ],
                capture_output=True,
                check=False,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"postgres not ready on port {self.port} after {timeout} s")

    def _create_database(self) -> None:
        subprocess.run(
            [
                self._bin("createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                self.user,
                self.database,
            ],
            check=True,
            capture_output=True,
        )

    def create_database(self, name: str) -> str:
        """A fresh empty database on this server; its URL."""
        subprocess.run(
            [self._bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name],
            check=True,
            capture_output=True,
        )
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{name}"

    def kill(self) -> None:
        """SIGKILL the postmaster and its backends (its process group)."""
        if self._proc is None:
            return
        postmaster = self._postmaster_pid()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait()
        self._proc = None
        self._wait_gone(postmaster)

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    @staticmethod
    def _wait_gone(pid: int | None, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while pid is not None and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    def restart(self) -> None:
        """Starts the server again on the same port and data (after ``kill`` or ``stop``)."""
        if self._proc is not None:
            self.stop()
        self._launch()

    def stop(self) -> None:
        if self._proc is None:
            return
        postmaster = self._postmaster_pid()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGINT)  # fast shutdown, sent past runuser
        try:
            self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()
        self._proc = None
        self._wait_gone(postmaster)
