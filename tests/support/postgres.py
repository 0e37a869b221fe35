"""A throwaway PostgreSQL 15 cluster for tests: initdb + pg_ctl as user postgres, loopback only.

One cluster per test session (``initdb`` ~1 s, start ~0.1 s) on a private port and data
directory; each test module creates its own database in it. Durability is switched off
(fsync, synchronous_commit): the data is thrown away anyway.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from tests.support.ports import free_port, wait_for_tcp

PG_BIN = Path(os.environ.get("KLUIS_PG_BIN", "/usr/lib/postgresql/15/bin"))


class PostgresUnavailable(RuntimeError):
    """PostgreSQL cannot be started here (binaries or the postgres user missing)."""


class PostgresCluster:
    """A running cluster; ``create_database()`` hands out fresh, empty databases."""

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists():
            raise PostgresUnavailable(f"no initdb in {PG_BIN}")
        try:
            self._user = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable("there is no postgres user") from None
        if os.geteuid() != 0:
            raise PostgresUnavailable("starting a cluster as user postgres needs root")
        self.base = Path(tempfile.mkdtemp(prefix="kluis-pg-"))
        os.chown(self.base, self._user.pw_uid, self._user.pw_gid)
        self.data = self.base / "data"
        self.port = free_port()
        self.log = self.base / "postgres.log"
        self._started = False

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            list(args),
            user=self._user.pw_uid,
            group=self._user.pw_gid,
            cwd=self.base,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise PostgresUnavailable(f"{args[0]} failed: {result.stderr or result.stdout}")

    def start(self) -> None:
        """initdb and start on 127.0.0.1:port (trust authentication: loopback, throwaway)."""
        self._run(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )
        options = " ".join(
            [
                f"-p {self.port}",
                f"-k {self.base}",
                "-c listen_addresses=127.0.0.1",
                "-c max_connections=400",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c shared_buffers=64MB",
            ]
        )
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start"
        )
        self._started = True
        wait_for_tcp(self.port, 10)

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL of a database in this cluster."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "kluis") -> str:
        """A new, empty database; returns its URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Stop the cluster and remove its files."""
        if self._started:
            try:
                self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
            except PostgresUnavailable:
                pass
            self._started = False
        shutil.rmtree(self.base, ignore_errors=True)
