"""A throw-away PostgreSQL server for tests: started in a temporary directory, removed afterwards.

The server listens only on a unix socket inside its own directory (``listen_addresses=''``), so
several test sessions on one machine never collide on a port, and it trusts local connections
(no password). ``initdb`` refuses to run as root, so as root the cluster belongs to the
``postgres`` system user (``runuser -u postgres``); as any other user it belongs to that user.

Binaries are looked for in ``$BENCHBNN_PG_BIN``, then in Debian's ``/usr/lib/postgresql/*/bin``,
then on ``PATH``. When none are found and the tests run as root, ``apt-get install -y
postgresql`` is tried once; otherwise the fixture fails with a message saying what to install.

Use from a test module::

    (registered for every test module by conftest.py: pytest_plugins = ["pg"])

    def test_x(postgres_server):
        url = postgres_server.new_database("x")   # postgresql+psycopg2://postgres@/x?host=...
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SUPERUSER = "postgres"


def find_bin_dir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or None."""
    candidates = [os.environ.get("BENCHBNN_PG_BIN", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    on_path = shutil.which("pg_ctl")
    candidates.append(str(Path(on_path).parent) if on_path else "")
    for candidate in candidates:
        if candidate and all((Path(candidate) / tool).is_file() for tool in ("initdb", "pg_ctl")):
            return Path(candidate)
    return None


def _install_with_apt() -> None:
    """Install Debian's postgresql package (root only); failures are left to the caller."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "postgresql"],
        env=env,
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=600,
    )


def locate_binaries() -> Path:
    bin_dir = find_bin_dir()
    if bin_dir is None and os.geteuid() == 0 and shutil.which("apt-get"):
        _install_with_apt()
        bin_dir = find_bin_dir()
    if bin_dir is None:
        raise RuntimeError(
            "PostgreSQL server binaries (initdb, pg_ctl) were not found in $BENCHBNN_PG_BIN, "
            "/usr/lib/postgresql/*/bin or PATH; install them (Debian: apt-get install -y "
            "postgresql) or point BENCHBNN_PG_BIN at their directory"
        )
    return bin_dir


@dataclass
class PostgresServer:
    """A running throw-away cluster reachable through the unix socket in ``socket_dir``."""

    bin_dir: Path
    root: Path
    as_user: str | None  # None: run the binaries as the current user

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess:
        command = [str(self.bin_dir / tool), *args]
        if self.as_user:
            command = ["runuser", "-u", self.as_user, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            log = self.log_file.read_text() if self.log_file.exists() else ""
            output = result.stderr.strip() or result.stdout.strip()
            raise RuntimeError(
                f"{tool} failed ({result.returncode}): {output}"
                + (f"\nserver log:\n{log[-2000:]}" if log else "")
            )
        return result

    def start(self) -> None:
        self.socket_dir.mkdir()
        if self.as_user:
            shutil.chown(self.root, user=self.as_user)
            shutil.chown(self.socket_dir, user=self.as_user)
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-A",
            "trust",
            "-U",
            SUPERUSER,
            "--no-sync",
            "-E",
            "UTF8",
        )
        # fsync off: a test cluster never needs to survive a power cut.
        options = f"-k {self.socket_dir} -c listen_addresses='' -c fsync=off -c max_connections=100"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-o",
            options,
            "-l",
            str(self.log_file),
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")

    def url(self, database: str) -> str:
        """An SQLAlchemy URL for ``database`` over the unix socket."""
        return f"postgresql+psycopg2://{SUPERUSER}@/{database}?host={self.socket_dir}"

    def new_database(self, name: str) -> str:
        """Create an empty database and return its URL."""
        self._run("createdb", "-h", str(self.socket_dir), "-U", SUPERUSER, name)
        return self.url(name)


def start_server() -> PostgresServer:
    """Start a fresh cluster (the caller must call ``stop()`` and remove ``root``)."""
    bin_dir = locate_binaries()
    as_user = SUPERUSER if os.geteuid() == 0 else None
    # As root the server runs as another user, who must be able to reach the directory, and a
    # unix socket path must stay under ~100 characters: /tmp satisfies both.
    parent = "/tmp" if as_user and Path("/tmp").is_dir() else None
    root = Path(tempfile.mkdtemp(prefix="benchbnn-pg-", dir=parent))
    server = PostgresServer(bin_dir=bin_dir, root=root, as_user=as_user)
    try:
        server.start()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole test session; never skipped (a missing server fails)."""
    try:
        server = start_server()
    except RuntimeError as exc:
        pytest.fail(f"cannot start a throw-away PostgreSQL server: {exc}", pytrace=False)
    try:
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(server.root, ignore_errors=True)
