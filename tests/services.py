"""Real services for the tests: a throwaway PostgreSQL server (initdb into a temporary folder,
a random free port on localhost, stopped at the end of the session). Where no server binaries
are found, the tests that need one skip with that reason (`make services` installs Debian's
`postgresql`; CI's `.ci/run` calls it)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


def server_binaries() -> Path | None:
    """The folder holding initdb and pg_ctl: on PATH, or Debian's /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[4]))
    return Path(folders[-1]) if folders and Path(folders[-1], "initdb").exists() else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Postgres:
    """A PostgreSQL server of our own: ``url`` is a SQLAlchemy URL to its ``tunelab`` database
    (user ``tunelab``, password ``secret``: the tests check it never reaches a file)."""

    def __init__(self, folder: Path):
        self.bin = server_binaries()
        if self.bin is None:
            raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl): make services")
        self.folder, self.port = folder, free_port()
        self.data = folder / "data"
        # initdb refuses to run as root: run the server as Debian's postgres user then
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user and shutil.which("runuser") is None:
            raise RuntimeError("running as root and no runuser to start PostgreSQL as postgres")

    def _run(self, *argv: str, timeout: float = 120) -> None:
        proc = subprocess.run(
            [*self.as_user, *argv], capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode:
            raise RuntimeError(f"{argv[0]} failed: {proc.stderr.strip()[-800:]}")

    def start(self) -> Postgres:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.as_user:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")
        opts = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        log = str(self.folder / "server.log")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", log, "-w",
                  "start")  # fmt: skip
        self.sql("CREATE USER tunelab PASSWORD 'secret'")
        self.sql("CREATE DATABASE tunelab OWNER tunelab")
        return self

    def sql(self, statement: str, db: str = "postgres") -> None:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=db)
        conn.autocommit = True
        try:
            conn.cursor().execute(statement)
        finally:
            conn.close()

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://tunelab:secret@127.0.0.1:{self.port}/tunelab"

    def fresh(self, name: str) -> str:
        """A new empty database of the server (one per test): its URL."""
        self.sql(f"CREATE DATABASE {name} OWNER tunelab")
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")


def wait_until(predicate, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError("timed out")
        time.sleep(0.1)
