"""Servers a test owns and may break: a private Postgres, a private Redis, an ASGI app on loopback.

The shared servers of scripts/local-services.sh serve every test at once, so no test may stop them.
These are started for one test (or one module) on a random loopback port, and can be stopped, killed
with SIGKILL and restarted on the same port and data while the code under test keeps running:

    async def test_x(private_postgres: PrivatePostgres) -> None:
        pool = await asyncpg.create_pool(private_postgres.dsn())
        await asyncio.to_thread(private_postgres.stop)    # blocking calls: keep the loop serving
        ...
        await asyncio.to_thread(private_postgres.start)

    async with serve_asgi(app) as base_url: ...           # uvicorn in this event loop

Also a pytest plugin: the fixtures `private_postgres` and `private_redis` (started, removed after the
test; `@pytest.mark.private_redis(appendonly=True)` passes PrivateRedis arguments).

PostgreSQL refuses to run as root, so as root its commands run as the `postgres` user
(`runuser -u postgres --`) on a data directory that user owns, as scripts/local-services.sh does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from clarion_dev.net import free_port
from clarion_dev.testing.markers import marker_kwargs

PG_BIN = Path(os.environ.get("CLARION_PG_BIN", "/usr/lib/postgresql/15/bin"))
LOOPBACK = "127.0.0.1"


class ServerError(RuntimeError):
    """A private server did not start or stop; the message carries the end of its log."""


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0


def _wait(condition: Any, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise ServerError(f"timed out after {timeout:g}s waiting for {what}; log:\n{_log_tail(log)}")
        time.sleep(0.05)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed child of ours stays a zombie until reaped; a zombie is not running.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(") ", 1)[-1].split()
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry.name))
    return found


class PrivatePostgres:
    """A PostgreSQL cluster of its own: initdb into a temporary directory, trust auth, loopback only.

    `start`, `stop`, `kill` and `restart` block until the server answers or is gone; call them with
    `asyncio.to_thread` from a test whose event loop must keep running. The port and the data survive
    a stop or a kill, so clients reconnect to the same DSN. `remove` stops it and deletes the data.
    """

    def __init__(self, *, port: int | None = None, user: str = "clarion", bin_dir: Path = PG_BIN,
                 settings: Mapping[str, str] | None = None, base_dir: str | None = None) -> None:
        self.port = port or free_port()
        self.user = user
        self.bin_dir = bin_dir
        self.settings = {"max_connections": "100", "fsync": "off", "shared_buffers": "32MB",
                         **(settings or {})}
        self.root = Path(tempfile.mkdtemp(prefix="clarion-pg-", dir=base_dir))
        self.data_dir = self.root / "data"
        self.log_path = self.root / "server.log"
        self._as_root = os.geteuid() == 0

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@{LOOPBACK}:{self.port}/{database}"

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / argv[0]), *argv[1:]]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
        if check and result.returncode != 0:
            raise ServerError(f"{argv[0]} failed ({result.returncode}): {result.stderr.strip()}\n"
                              f"log:\n{_log_tail(self.log_path)}")
        return result

    def init(self) -> None:
        """initdb, once; `start` calls it."""
        if (self.data_dir / "PG_VERSION").exists():
            return
        if not (self.bin_dir / "initdb").exists():
            raise ServerError(f"no PostgreSQL binaries in {self.bin_dir} (set CLARION_PG_BIN)")
        if self._as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data_dir), "-U", self.user, "--auth=trust", "-E", "UTF8",
                  "--locale=C.UTF-8")
        conf = {"listen_addresses": f"'{LOOPBACK}'", "port": str(self.port),
                "unix_socket_directories": f"'{self.root}'", **self.settings}
        with (self.data_dir / "postgresql.conf").open("a") as file:
            file.writelines(f"{key} = {value}\n" for key, value in conf.items())

    def start(self, timeout: float = 60) -> None:
        """Start (initdb first when new); return once it accepts connections."""
        self.init()
        if self.is_running():
            return
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_path), "-w", "-t", str(int(timeout)),
                  "start")

    def stop(self, mode: str = "fast") -> None:
        """A clean shutdown (`pg_ctl stop -m fast|smart|immediate`): clients are disconnected."""
        if self.is_running():
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    def kill(self, timeout: float = 30) -> None:
        """SIGKILL the postmaster and every backend at once, as an OOM kill of the container would."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        # Stopped first, the postmaster forks no backend between the listing and the kill. The victims
        # are listed before the kill: orphaned backends get a new parent.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
        victims = [pid, *_children(pid)]
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        _wait(lambda: not any(_pid_alive(v) for v in victims), timeout, "postgres to die", self.log_path)
        # Its lock files are stale now, but until the zombie postmaster is reaped (by whoever is PID 1)
        # the next postmaster would take its pid for a live server's and refuse to start.
        for lock in [self.data_dir / "postmaster.pid", *self.root.glob(".s.PGSQL.*")]:
            lock.unlink(missing_ok=True)

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def postmaster_pid(self) -> int | None:
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def is_running(self) -> bool:
        return self.postmaster_pid() is not None and _port_open(self.port)

    def remove(self) -> None:
        """Stop it hard and delete its directory."""
        with contextlib.suppress(ServerError):
            self.stop("immediate")
        with contextlib.suppress(ServerError):
            self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedis:
    """A redis-server of its own on a random loopback port, in the foreground as our child process.

    `stop` is a clean SHUTDOWN (SIGTERM: with `appendonly`, the AOF is flushed first); `kill` is SIGKILL,
    which loses what the AOF had not written yet (`appendfsync` defaults to everysec). Restarts reuse
    the port and the directory, so an AOF is read back.
    """

    def __init__(self, *, port: int | None = None, appendonly: bool = False, appendfsync: str = "everysec",
                 args: Sequence[str] = (), binary: str = "redis-server", base_dir: str | None = None) -> None:
        self.port = port or free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.args = list(args)
        self.binary = binary
        self.root = Path(tempfile.mkdtemp(prefix="clarion-redis-", dir=base_dir))
        self.log_path = self.root / "redis.log"
        self._process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://{LOOPBACK}:{self.port}/{db}"

    def start(self, timeout: float = 30) -> None:
        if self.is_running():
            return
        if shutil.which(self.binary) is None:
            raise ServerError(f"{self.binary} is not installed")
        argv = [self.binary, "--bind", LOOPBACK, "--port", str(self.port), "--dir", str(self.root),
                "--logfile", str(self.log_path), "--save", "", "--daemonize", "no",
                "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", self.appendfsync,
                *self.args]
        self._process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
        process = self._process

        def up() -> bool:
            if process.poll() is not None:
                raise ServerError(f"redis-server exited with {process.returncode}; log:\n"
                                  f"{_log_tail(self.log_path)}")
            return self._ping()

        _wait(up, timeout, "redis to answer PING", self.log_path)

    def _ping(self) -> bool:
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _end(self, sig: signal.Signals, timeout: float) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            process.kill()
            process.wait()
            raise ServerError(f"redis-server ignored {sig.name} for {timeout:g}s") from exc

    def stop(self, timeout: float = 30) -> None:
        self._end(signal.SIGTERM, timeout)

    def kill(self, timeout: float = 30) -> None:
        self._end(signal.SIGKILL, timeout)

    def restart(self) -> None:
        self.stop()
        self.start()

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None and self._ping()

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.asynccontextmanager
async def serve_asgi(app: Any, *, port: int | None = None,
                     timeout: float = 30) -> AsyncIterator[str]:  # noqa: ASYNC109 - a startup deadline
    """Serve an ASGI app (its lifespan included) with uvicorn on loopback in this event loop.

    Yields the base URL; on exit the server stops accepting, finishes the requests in flight and runs
    the app's shutdown.
    """
    import uvicorn

    config = uvicorn.Config(app, host=LOOPBACK, port=port or free_port(), lifespan="on", log_config=None,
                            access_log=False, server_header=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + timeout
    while not server.started:
        if task.done():
            task.result()
            raise ServerError("uvicorn exited before it started (see the app's lifespan)")
        if time.monotonic() >= deadline:
            server.should_exit = True
            raise ServerError(f"uvicorn did not start within {timeout:g}s")
        await asyncio.sleep(0.02)
    try:
        yield f"http://{LOOPBACK}:{config.port}"
    finally:
        server.should_exit = True
        await task


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "private_redis(appendonly, appendfsync, args): configure the "
                                       "private_redis fixture (clarion_dev.testing.servers)")
    config.addinivalue_line("markers", "private_postgres(settings): configure the private_postgres fixture "
                                       "(clarion_dev.testing.servers)")


@pytest.fixture
def private_postgres(request: pytest.FixtureRequest) -> Iterator[PrivatePostgres]:
    """A started PrivatePostgres for this test, removed afterwards."""
    server = PrivatePostgres(**marker_kwargs(request, "private_postgres"))
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
def private_redis(request: pytest.FixtureRequest) -> Iterator[PrivateRedis]:
    """A started PrivateRedis for this test, removed afterwards."""
    server = PrivateRedis(**marker_kwargs(request, "private_redis"))
    try:
        server.start()
        yield server
    finally:
        server.remove()
