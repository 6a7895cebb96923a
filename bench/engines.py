"""Real PostgreSQL and Milvus servers on 127.0.0.1 for the tests and `catalens bench query`.

Each is started in a temporary folder on a free port and stopped (folder removed) on exit:
PostgreSQL from Debian's package (`initdb` + `pg_ctl`, as the `postgres` user when run as
root), Milvus from the `milvus` package's embedded standalone server.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.query import free_port
from catalens.errors import BenchError

PG_USER = "postgres"


def postgres_bindir() -> Path | None:
    """Where Debian's (or any) PostgreSQL server binaries are: PATH first, then /usr/lib/postgresql/*/bin."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name), reverse=True)
    return Path(dirs[0]) if dirs else None


@dataclass
class Postgres:
    """A running server: `url(db)` names a database on it; `create(db)` makes one."""

    port: int
    data: Path
    bindir: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={PG_USER} dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(statement)  # type: ignore[arg-type]

    def create(self, name: str | None = None, *, template: str | None = None) -> str:
        """A new empty database (or a copy of `template`); returns its URL."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        self.sql(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return self.url(name)

    def pg_ctl(self, *args: str) -> None:
        _as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.data), *args])

    def stop(self) -> None:
        self.pg_ctl("stop", "-m", "fast", "-w")

    def start(self) -> None:
        self.pg_ctl("start", "-w", "-t", "60", "-l", str(self.data / "server.log"),
                    "-o", f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''")


def _as_postgres(cmd: list[str]) -> None:
    """Run a server command as the postgres user (initdb refuses root), quietly; one-line error."""
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", PG_USER, "--", *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode:
        raise BenchError(f"{' '.join(cmd[-3:])} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    """A throwaway PostgreSQL on 127.0.0.1 (trust auth, fsync off: test data only)."""
    bindir = postgres_bindir()
    if bindir is None:
        raise BenchError("PostgreSQL is not installed (Debian: apt-get install postgresql; `make test` does it)")
    root = Path(tempfile.mkdtemp(prefix="catalens-pg-"))
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        user = pwd.getpwnam(PG_USER)
        os.chmod(root, 0o755)
        os.chown(data, user.pw_uid, user.pw_gid)
    server = Postgres(free_port(), data, bindir)
    try:
        _as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust", "-E", "UTF8",
                      "--no-sync"])
        with open(data / "postgresql.conf", "a") as fh:
            fh.write("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n")
        server.start()
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Milvus:
    port: int
    server: object

    @property
    def url(self) -> str:
        return f"milvus://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop()  # type: ignore[attr-defined]

    def start(self) -> None:
        self.server.start()  # type: ignore[attr-defined]


def _bind_reusable(port: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        return sock
    except OSError:
        sock.close()
        return None


@contextlib.contextmanager
def milvus_server() -> Iterator[Milvus]:
    """The `milvus` package's embedded Milvus 2.3 standalone server, its gRPC port on a free port."""
    try:
        from milvus import MilvusServer
    except ImportError as exc:
        raise BenchError("the embedded Milvus server is not installed: pip install milvus") from exc
    root = Path(tempfile.mkdtemp(prefix="catalens-milvus-"))
    server = MilvusServer()
    # Its port check binds without SO_REUSEADDR, so a restart after clients were connected (the
    # port in TIME_WAIT) moved to another port; the Go server itself binds with it.
    server.config.try_bind_port = _bind_reusable
    server.set_base_dir(str(root))
    port = free_port()
    server.listen_port = port
    try:
        server.start()
        yield Milvus(port, server)
    finally:
        with contextlib.suppress(Exception):
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
