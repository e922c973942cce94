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


@contextmanager
def postgres_server(folder: Path) -> Iterator[str]:
    """Yield a SQLAlchemy URL of a fresh database; the server stops when the block ends."""
    bin_dir = binaries()
    assert bin_dir is not None, "PostgreSQL is not installed (apt-get install postgresql)"
    if os.geteuid() == 0:  # pytest's folders are root's alone: the server user gets its own
        folder = Path(tempfile.mkdtemp(prefix="mlcycle-pg-"))
        shutil.chown(folder, "postgres")
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "pgdata"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = {"check": True, "capture_output": True, "timeout": 120}
    subprocess.run(
        _as_server_user([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "mlcycle"]),
        **run,
    )
    opts = f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=on"
    subprocess.run(
        _as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-o", opts,
                         "-l", str(folder / "server.log"), "-w", "start"]),
        **run,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        yield f"postgresql+psycopg://mlcycle@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            _as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]),
            capture_output=True,
            timeout=60,
        )
        if os.geteuid() == 0:
            shutil.rmtree(folder, ignore_errors=True)
