"""A throwaway PostgreSQL server for the test session: `initdb` into a temporary folder with trust
authentication, `pg_ctl` on a free port of 127.0.0.1, stopped and removed at the end. It uses the
server programs of Debian's `postgresql` package (`make setup` installs it) and no server anyone else
started. As root it runs them as the package's `postgres` user (the server refuses to run as root).
`GUESTINFO_TEST_POSTGRES=postgresql://USER@HOST:PORT/DB` points the tests at an existing server instead."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from guestinfo.broker import free_port

#: Where Debian's packages put each major version's server programs.
DEBIAN_SERVERS = Path("/usr/lib/postgresql")
DATABASE = "guestinfo_test"


def server_programs() -> Path:
    """The newest installed major version's program folder (initdb, pg_ctl, createdb)."""
    versions = sorted(
        (path for path in DEBIAN_SERVERS.glob("*/bin") if (path / "initdb").exists() and path.parent.name.isdigit()),
        key=lambda path: int(path.parent.name),
    )
    if not versions:
        pytest.fail(f"PostgreSQL's server programs are not in {DEBIAN_SERVERS}/VERSION/bin: the Debian package "
                    "postgresql is missing (`make setup` installs it)")
    return versions[-1]


class PostgresServer:
    """One server in a folder of its own; `url` is its test database once started."""

    def __init__(self) -> None:
        self.programs = server_programs()
        self.folder = Path(tempfile.mkdtemp(prefix="guestinfo-postgres-"))
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.port = 0
        self._run_as: list[str] = []

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def start(self) -> None:
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail("running as root, the tests start PostgreSQL as the user `postgres`, which Debian's "
                            "postgresql package creates: it is missing")
            os.chown(self.folder, account.pw_uid, account.pw_gid)
            self._run_as = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync", "--no-locale",
                  "-E", "UTF8")
        for _ in range(3):  # the free port may be taken before the server binds it: another one then
            self.port = free_port()
            options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off "
                       "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
            started = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60",
                                "start", check=False)
            if started.returncode == 0:
                break
        else:
            pytest.fail(f"PostgreSQL did not start:\n{self._log_tail()}")
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", DATABASE)

    def stop(self) -> None:
        if self.port and (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop", check=False)
        shutil.rmtree(self.folder, ignore_errors=True)

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*self._run_as, str(self.programs / program), *args], capture_output=True, text=True,
                                timeout=120, cwd=self.folder)
        if check and result.returncode != 0:
            pytest.fail(f"{program} failed ({result.returncode}):\n{result.stderr}{result.stdout}\n{self._log_tail()}")
        return result

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
