"""A throw-away PostgreSQL server for the tests: ``initdb`` in a temporary folder, a free port on
localhost, stopped and removed at the end. Uses the distribution's server binaries (Debian:
``apt-get install postgresql``, which `.ci/run` does when they are missing)."""

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


def server_binaries() -> Path | None:
    """The folder of ``initdb``/``pg_ctl``/``postgres``: on the PATH, else Debian's newest version."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user() -> list[str]:
    """PostgreSQL refuses to run as root: under root, run its programs as the ``postgres`` user."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "postgres", "--"]


@contextmanager
def postgres_server(database: str = "mlipopt") -> Iterator[str]:
    """Start a server, create ``database`` and yield its SQLAlchemy URL; stop the server afterwards."""
    bindir = server_binaries()
    if bindir is None:
        raise FileNotFoundError("no PostgreSQL server binaries (initdb) found")
    prefix = _as_server_user()
    folder = Path(tempfile.mkdtemp(prefix="mlipopt-pg-", dir="/tmp"))
    data = folder / "data"
    if prefix:
        shutil.chown(folder, "postgres", "postgres")
    port = _free_port()

    def run(*command: str) -> None:
        subprocess.run([*prefix, *command], check=True, capture_output=True, text=True, timeout=120)

    try:
        run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "mlipopt", "--no-sync")
        run(
            str(bindir / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w", "-t", "60",
            "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start",
        )  # fmt: skip
        try:
            run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlipopt", database)
            yield f"postgresql://mlipopt@127.0.0.1:{port}/{database}"
        finally:
            subprocess.run(
                [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                capture_output=True, timeout=120,
            )  # fmt: skip
            time.sleep(0.1)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
