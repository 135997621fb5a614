"""A throwaway PostgreSQL server on 127.0.0.1 for the storage tests (fixtures ``pg_server``, ``pg_url``).

Why not a mock: the failures worth testing (two processes on one study, a killed worker, wrong
credentials) are the server's behaviour. The machines carry PostgreSQL 15 binaries; PostgreSQL
refuses to run as root, so under root (CI) the server runs as an unprivileged user. Each test gets
its own database; the server is stopped and its folder deleted at the end of the session.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

USER, PASSWORD = "bess", "bess-test-pw"


@dataclass(frozen=True)
class PgServer:
    port: int
    host: str = "127.0.0.1"

    def url(self, database: str, password: str = PASSWORD, driver: str = "postgresql") -> str:
        return f"{driver}://{USER}:{password}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg2

        conn = psycopg2.connect(host=self.host, port=self.port, user=USER, password=PASSWORD, dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)


def _binary(name: str) -> str | None:
    """``initdb``/``pg_ctl`` on PATH, else the newest of Debian's versioned folders (not on PATH there)."""
    return shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_user() -> str | None:
    """None: run as ourselves. Under root: the ``postgres`` account if there is one, else ``nobody``."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    pytest.skip("running as root and neither a 'postgres' nor a 'nobody' account exists to run PostgreSQL")


def _as(user: str | None, *cmd: str) -> subprocess.CompletedProcess:
    argv = [*cmd] if user is None else ["runuser", "-u", user, "--", *cmd]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found: install PostgreSQL to run the storage tests")
    pytest.importorskip("psycopg2", reason="psycopg2 missing: pip install -e '.[cluster]'")
    user = _server_user()
    root = Path(tempfile.mkdtemp(prefix="bess_rl_pg_"))
    data, pwfile, logfile = root / "data", root / "pw", root / "log"
    pwfile.write_text(PASSWORD + "\n")
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
        os.chown(pwfile, entry.pw_uid, entry.pw_gid)
    port = free_port()
    options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={root} -c fsync=off"
    try:
        init = _as(user, initdb, "-D", str(data), "-U", USER, f"--pwfile={pwfile}", "--auth=scram-sha-256",
                   "-E", "UTF8", "--no-sync")  # fmt: skip
        assert init.returncode == 0, init.stdout + init.stderr
        start = _as(user, pg_ctl, "-D", str(data), "-l", str(logfile), "-o", options, "-w", "-t", "30", "start")
        assert start.returncode == 0, start.stdout + start.stderr + logfile.read_text()
        yield PgServer(port)
    finally:
        if data.is_dir():
            _as(user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: PgServer, request: pytest.FixtureRequest) -> str:
    """A fresh database for this test (named after it), as an SQLAlchemy URL with the psycopg2 driver."""
    name = "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:60]
    return pg_server.create_database(name)
