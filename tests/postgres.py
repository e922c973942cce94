"""A throwaway PostgreSQL server on loopback for tests (Debian's `postgresql` package).

initdb into a temporary folder, start on a free 127.0.0.1 port with trust authentication, stop
and delete on exit. As root (CI), the server runs as the `postgres` user, which refuses root.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class PgServer:
    """A PostgreSQL server in ``folder`` on a free loopback port, which tests stop and restart
    (a database outage under load) at the same URL."""

    def __init__(self, folder: Path) -> None:
        bin_dir = binaries()
        assert bin_dir is not None, "PostgreSQL is not installed (apt-get install postgresql)"
        self.bin_dir = bin_dir
        self.owned = os.geteuid() == 0
        if self.owned:  # pytest's folders are root's alone: the server user gets its own
            folder = Path(tempfile.mkdtemp(prefix="mlcycle-pg-"))
            shutil.chown(folder, "postgres")
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.data = folder / "pgdata"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"postgresql+psycopg://mlcycle@127.0.0.1:{self.port}/postgres"
        subprocess.run(
            _as_server_user(
                [str(bin_dir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "mlcycle"]
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        opts = f"-h 127.0.0.1 -p {self.port} -k {self.folder} -c fsync=on"
        subprocess.run(
            _as_server_user([str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-o", opts,
                             "-l", str(self.folder / "server.log"), "-w", "start"]),
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: open transactions are rolled back, clients disconnected;
        ``immediate``: as a crash)."""
        subprocess.run(
            _as_server_user([str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", mode,
                             "-w", "stop"]),
            capture_output=True, timeout=60,
        )  # fmt: skip

    def remove(self) -> None:
        self.stop()
        if self.owned:
            shutil.rmtree(self.folder, ignore_errors=True)


@contextmanager
def postgres_server(folder: Path) -> Iterator[str]:
    """Yield a SQLAlchemy URL of a fresh database; the server stops when the block ends."""
    with postgres_instance(folder) as server:
        yield server.url


@contextmanager
def postgres_instance(folder: Path) -> Iterator[PgServer]:
    """A started :class:`PgServer`, stopped and deleted when the block ends."""
    server = PgServer(folder)
    try:
        server.start()
        yield server
    finally:
        server.remove()
