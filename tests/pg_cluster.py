"""A real PostgreSQL server for the tests: one throwaway cluster a test session.

`PgCluster.create()` runs Debian's server binaries (/usr/lib/postgresql/<version>/bin,
newest version first): `initdb` (trust auth, UTF8, locale C) in a fresh folder, then
`pg_ctl start` listening on 127.0.0.1 at a free port, its unix socket in that folder.
The server refuses to run as root, so as root the folder is handed to the `postgres`
user and every server command runs through `runuser -u postgres --`; as any other user
the commands run directly. Settings are for tests, not for data: fsync off, small
shared_buffers, 200 connections.

A watchdog child process holds a pipe from this process: when the pipe closes (a normal
`close()`, or this process dying in any way, SIGKILL included) it stops the server and
removes the folder, so no postmaster outlives the test session.

    cluster = PgCluster.create()          # raises PgUnavailable(reason) when it cannot
    url = cluster.create_database()       # postgresql://postgres@127.0.0.1:PORT/test_1
    cluster.restart(); cluster.kill(); cluster.start()
    cluster.close()

tests/conftest.py turns this into the `pg_cluster` (session) and `pg_url` (a fresh empty
database a test) fixtures; PgUnavailable becomes a skip naming the reason.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

POSTGRES_ROOT = Path("/usr/lib/postgresql")
SERVER_USER = "postgres"
# appended to postgresql.conf. fsync off: only an OS crash loses data, which no test
# makes; synchronous_commit stays on, so a commit survives kill() as in production.
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "16MB",
    "max_connections": "200",
    "log_min_messages": "warning",
    "logging_collector": "off",
}
START_TIMEOUT_S = 30


class PgUnavailable(Exception):
    """No PostgreSQL server can run here; the message says why."""


def find_bin_dir(root: Path = POSTGRES_ROOT) -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb, pg_ctl and postgres."""
    if not root.is_dir():
        return None
    versions = sorted((p for p in root.iterdir() if p.name.replace(".", "").isdigit()),
                      key=lambda p: tuple(int(x) for x in p.name.split(".")), reverse=True)
    for version in versions:
        bin_dir = version / "bin"
        if all((bin_dir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return bin_dir
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at this moment."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PgCluster:
    """One running PostgreSQL cluster in a folder of its own; see the module docstring."""

    def __init__(self, bin_dir: Path, folder: Path, port: int, as_user: str | None) -> None:
        self.bin_dir = bin_dir
        self.folder = folder
        self.data = folder / "data"
        self.log = folder / "server.log"
        self.port = port
        self.as_user = as_user
        self.host = "127.0.0.1"
        self._databases = 0
        self._watchdog: subprocess.Popen[bytes] | None = None

    # -- making one -------------------------------------------------------------------

    @classmethod
    def create(cls, bin_dir: Path | None = None) -> PgCluster:
        """initdb and start a cluster; PgUnavailable when the binaries, psycopg or
        initdb are missing or failing (the message says which)."""
        try:
            import psycopg  # noqa: F401
        except ImportError as error:
            raise PgUnavailable(f"psycopg is not importable ({error}); "
                                "pip install -e '.[test]'") from None
        bin_dir = bin_dir or find_bin_dir()
        if bin_dir is None:
            raise PgUnavailable(f"no PostgreSQL server binaries under {POSTGRES_ROOT}/*/bin "
                                "(Debian: apt-get install postgresql)")
        as_user = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise PgUnavailable(f"running as root and there is no {SERVER_USER!r} user "
                                    "to run the server as") from None
            as_user = SERVER_USER
        folder = Path(tempfile.mkdtemp(prefix="pgtest-"))
        cluster = cls(bin_dir, folder, free_port(), as_user)
        cluster._watch()  # first: from here on, the folder goes away whatever happens
        try:
            if as_user is not None:
                entry = pwd.getpwnam(as_user)
                os.chown(folder, entry.pw_uid, entry.pw_gid)
            cluster._initdb()
            cluster._first_start()
        except BaseException:
            cluster.close()
            raise
        return cluster

    def _initdb(self) -> None:
        run = self._run(["initdb", "-D", str(self.data), "-U", SERVER_USER, "--auth=trust",
                         "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"])
        if run.returncode != 0:
            raise PgUnavailable(f"initdb failed (exit {run.returncode}): "
                                f"{run.stdout.strip()[-800:]}")
        settings = dict(SETTINGS, unix_socket_directories=f"'{self.folder}'")
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# tests/pg_cluster.py\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def _first_start(self) -> None:
        """Start on the chosen port; another port when something took it meanwhile."""
        for _attempt in range(3):
            try:
                self.start()
                return
            except RuntimeError:
                if "already in use" not in self._log_tail():
                    raise
                self.port = free_port()
        self.start()

    def _watch(self) -> None:
        """The watchdog child: stops the server and removes the folder once our end of
        its stdin pipe closes (close(), or this process's death)."""
        self._watchdog = subprocess.Popen(
            [sys.executable, __file__, "--watchdog", str(self.bin_dir), str(self.folder),
             self.as_user or ""], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            start_new_session=True)

    # -- using it ---------------------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        """The URL of database `dbname` over TCP, as the superuser (trust auth)."""
        return f"postgresql://{SERVER_USER}@{self.host}:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A fresh empty database (test_1, test_2, …); its URL."""
        import psycopg

        self._databases += 1
        name = f"test_{self._databases}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def start(self) -> None:
        """Start the server (same port, same data) and wait until it accepts connections."""
        run = self._run(["pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w",
                         "-t", str(START_TIMEOUT_S), "-o", f"-p {self.port}"])
        if run.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed (exit {run.returncode}): "
                               f"{run.stdout.strip()[-400:]}\nserver log: {self._log_tail()}")

    def stop(self) -> None:
        """A fast shutdown: open sessions are ended, the data is kept."""
        run = self._run(["pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w",
                         "-t", str(START_TIMEOUT_S)])
        if run.returncode != 0:
            raise RuntimeError(f"pg_ctl stop failed (exit {run.returncode}): "
                               f"{run.stdout.strip()[-400:]}")

    def restart(self) -> None:
        self.stop()
        self.start()

    def kill(self) -> None:
        """SIGKILL the postmaster and every process of the server, as a crash of its
        machine would end them: open connections break at once. start() then runs
        PostgreSQL's crash recovery."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        victims = [pid, *_children(pid)]
        for victim in victims:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while any(_alive(victim) for victim in victims):
            if time.monotonic() > deadline:
                raise RuntimeError(f"server processes {victims} still alive after SIGKILL")
            time.sleep(0.01)
        # A dead postmaster nobody reaps stays a zombie, which the next postmaster would
        # take for a live one holding the data folder and the socket: its lock files go.
        if _zombie(pid):
            (self.data / "postmaster.pid").unlink(missing_ok=True)
            (self.folder / f".s.PGSQL.{self.port}.lock").unlink(missing_ok=True)

    def postmaster_pid(self) -> int | None:
        """The running postmaster's process id (postmaster.pid's first line), or None."""
        try:
            first = (self.data / "postmaster.pid").read_text(encoding="ascii").split("\n", 1)[0]
            pid = int(first)
        except (FileNotFoundError, ValueError):  # none, or one being written
            return None
        return pid if _alive(pid) else None

    def close(self) -> None:
        """Stop the server (immediate shutdown); idempotent. Returns once the server
        is stopped: the watchdog goes on removing the folder (a session's databases,
        seconds of unlinking) on its own."""
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is None:
            return
        assert watchdog.stdin is not None and watchdog.stdout is not None
        watchdog.stdin.close()
        stopped = threading.Timer(60, watchdog.kill)  # (a hung stop ends the read)
        stopped.start()
        try:
            watchdog.stdout.readline()  # "stopped", or the end of a watchdog gone
        finally:
            stopped.cancel()
            watchdog.stdout.close()

    # -- helpers ----------------------------------------------------------------------

    def _run(self, command: list[str]) -> subprocess.CompletedProcess[str]:
        return _run_as(self.bin_dir, self.folder, self.as_user, command)

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-800:]
        except FileNotFoundError:
            return "(no log)"


def _run_as(bin_dir: Path, folder: Path, as_user: str | None,
            command: list[str]) -> subprocess.CompletedProcess[str]:
    """`command` (a tool of bin_dir) as `as_user` when given, in `folder` (a cwd the
    server user can read: initdb checks it); stdout and stderr together."""
    argv = [str(bin_dir / command[0]), *command[1:]]
    if as_user:
        argv = ["runuser", "-u", as_user, "--", *argv]
    # no PG* variables of the caller's (PGDATA, PGPORT, …) reach the tools
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    return subprocess.run(argv, cwd=folder, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=120, check=False)


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: [state, ppid, …]; None when gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw.rsplit(")", 1)[1].split()


def _alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _zombie(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] == "Z"


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and fields[1] == str(parent):
                found.append(int(entry.name))
    return found


def _watchdog(bin_dir: Path, folder: Path, as_user: str | None) -> None:
    """Wait for stdin's end, then stop the cluster in `folder` and remove the folder."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is for pytest, not us
    sys.stdin.buffer.read()
    data = folder / "data"
    if (data / "postmaster.pid").exists():
        _run_as(bin_dir, folder, as_user, ["pg_ctl", "stop", "-D", str(data), "-m",
                                           "immediate", "-w", "-t", "30"])
    with contextlib.suppress(OSError):  # (close() is waiting for this line, or gone)
        sys.stdout.write("stopped\n")
        sys.stdout.flush()
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__" and sys.argv[1:2] == ["--watchdog"]:
    _watchdog(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] or None)
