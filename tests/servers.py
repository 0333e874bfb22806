"""Private Redis and PostgreSQL servers for fault tests: killed, paused and restarted at will.

Each server lives in a directory of its own under ``<tmp>/flashsale-test-servers``, named after
the pytest process that made it. Cleanup is layered so that no server outlives its test run:

* the fixtures stop and delete their server in a finalizer, whatever the test did to it;
* an ``atexit`` hook stops whatever a crashed fixture left behind;
* a Redis started here gets SIGKILL from the kernel when the thread that started it dies
  (``setpriv --pdeathsig``), even when pytest itself is SIGKILLed;
* every new server first sweeps the directories of pytest processes that no longer exist and
  kills the server recorded in each (by its pid, checked against the process's working
  directory, never by name).

Their ports, and those of the services tests start, come from :func:`free_port`, which no two
test processes (pytest-xdist's workers, or runs side by side) are ever given at once.
Readiness is polled (PING, ``pg_ctl -w``), never waited for with a fixed sleep. A missing binary
skips the test on a laptop and fails it under CI (``CI=true``).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_BIN = Path(os.environ.get("FLASHSALE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
BASE = Path(tempfile.gettempdir()) / "flashsale-test-servers"
PORTS = Path(tempfile.gettempdir()) / "flashsale-test-ports"
START_TIMEOUT_S = 20.0

_live: dict[int, PrivateRedis | PrivatePostgres] = {}
_claimed: dict[int, int] = {}  # port -> the descriptor of its lock file, held until exit


class ServerError(RuntimeError):
    """A private server did not start or stop as asked."""


def missing(what: str) -> NoReturn:
    """Skip (laptop) or fail (CI) a test that needs something this machine does not have."""
    message = f"{what} is not available; install it to run the fault tests"
    if CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _claimable_ports() -> range:
    """Ports below the kernel's ephemeral range, which neither ``bind(port 0)`` nor an outgoing
    connection of any process is ever given."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    if low < 12000:  # an ephemeral range that covers almost everything: still claimed below
        return range(20000, 30000)
    return range(low - 10000, low)


def free_port() -> int:
    """A port no other test process is using or will be given, free on 127.0.0.1 now.

    Checking that a port is free and using it later leaves a gap in which another process can
    take it; tests run in parallel processes (pytest-xdist), and a second ``serve --workers 2``
    would even share the port (SO_REUSEPORT) without an error. So each port is claimed: an
    exclusive ``flock`` on ``<tmp>/flashsale-test-ports/<port>``, held until this process
    exits (the kernel drops it then, even after SIGKILL), and never handed out twice here.
    Ports come from below the ephemeral range, so nothing that takes "any free port" gets one
    either; the bind check skips ports that other programs listen on."""
    PORTS.mkdir(exist_ok=True)
    with contextlib.suppress(PermissionError):  # made by another user: theirs to set
        PORTS.chmod(0o1777)  # every user's test processes claim ports here
    candidates = _claimable_ports()
    start = secrets.randbelow(len(candidates))  # not `random`: a test may have seeded it
    for i in range(len(candidates)):
        port = candidates[(start + i) % len(candidates)]
        if port in _claimed:
            continue
        try:
            fd = os.open(PORTS / str(port), os.O_RDONLY | os.O_CREAT, 0o644)
        except OSError:
            continue  # made by another user, unreadable: theirs
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # another test process holds it
        if not _bindable(port):
            os.close(fd)  # in use by something that claims nothing: leave it
            continue
        _claimed[port] = fd
        return port
    raise ServerError(f"no free port left in {candidates}")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # as servers bind (SO_REUSEADDR): a port left in TIME_WAIT is free for them
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cwd_of(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def _kill_if_in(pid: int, directory: Path) -> None:
    """SIGKILL ``pid`` only if it is a server working in ``directory`` (pids get reused)."""
    cwd = _cwd_of(pid)
    if cwd is not None and cwd.resolve() == directory.resolve():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _read_pid(path: Path) -> int | None:
    try:
        first = path.read_text().split("\n", 1)[0].strip()
        return int(first)
    except (OSError, ValueError):
        return None


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _server_dir(kind: str) -> Path:
    BASE.mkdir(mode=0o755, exist_ok=True)
    with contextlib.suppress(PermissionError):  # made by another user: theirs to set
        BASE.chmod(0o755)  # other users (postgres) must be able to traverse it
    sweep_leftovers()
    path = BASE / f"{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir(mode=0o700)
    return path


def sweep_leftovers() -> None:
    """Kill and delete the servers of pytest processes that died without cleaning up."""
    if not BASE.is_dir():
        return
    for path in BASE.iterdir():
        kind, _, rest = path.name.partition("-")
        owner = rest.partition("-")[0]
        if not owner.isdigit() or _alive(int(owner)):
            continue
        if kind == "redis":
            pid = _read_pid(path / "redis.pid")
            if pid is not None:
                _kill_if_in(pid, path)
        elif kind == "pg":
            data = path / "data"
            if (data / "postmaster.pid").exists():
                _pg_ctl_quietly(data, "stop", "-m", "immediate", "-w", "-t", "10")
            pid = _read_pid(data / "postmaster.pid")
            if pid is not None:
                _kill_if_in(pid, data)
        shutil.rmtree(path, ignore_errors=True)


@atexit.register
def _stop_all() -> None:
    for server in list(_live.values()):
        server.cleanup()


# -- Redis ----------------------------------------------------------------------------------


def _start_on_a_free_port(server: PrivateRedis | PrivatePostgres, name: str) -> None:
    """Start ``server`` on a free port; a program that claims no port (see :func:`free_port`)
    can take it before the server binds it, so a few tries."""
    for _ in range(5):
        server.port = free_port()
        try:
            server.start()
            return
        except ServerError:
            if "Address already in use" not in _tail(server.log):
                raise
    raise ServerError(f"{name} found no free port")


class PrivateRedis:
    """``redis-server`` on a free port with an AOF fsynced at every write, no RDB snapshots.

    Start and restart it from the thread that will outlive it (the test's own, not a worker
    thread of ``asyncio.to_thread``): the kernel kills it when that thread ends.
    """

    def __init__(self, directory: Path, binary: str) -> None:
        self.dir = directory
        self.binary = binary
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.log = directory / "redis.log"

    @classmethod
    def create(cls) -> PrivateRedis:
        binary = shutil.which("redis-server")
        if binary is None:
            missing("redis-server")
        server = cls(_server_dir("redis"), binary)
        _live[id(server)] = server
        try:
            _start_on_a_free_port(server, "redis-server")
        except BaseException:
            server.cleanup()
            raise
        return server

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not running"
        return self.proc.pid

    def _command(self) -> list[str]:
        command = [
            self.binary,
            "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "yes", "--appendfsync", "always",
            "--dir", str(self.dir), "--pidfile", str(self.dir / "redis.pid"),
            "--logfile", str(self.log), "--daemonize", "no",
        ]  # fmt: skip
        setpriv = shutil.which("setpriv")
        if setpriv is not None:
            # killed by the kernel if the thread that started it dies (pytest SIGKILLed, say)
            command = [setpriv, "--pdeathsig", "KILL", "--", *command]
        return command

    def start(self) -> None:
        """Start (again) on the same port and directory; returns once it answers PING."""
        if self.proc is not None and self.proc.poll() is None:
            raise ServerError("redis-server is already running")
        self.paused = False
        self.proc = subprocess.Popen(
            self._command(), cwd=self.dir, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self._wait_ready()

    def restart(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        self.start()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise ServerError(f"redis-server exited at start:\n{_tail(self.log)}")
            if self._ping() == b"+PONG":
                return
            if time.monotonic() > deadline:
                raise ServerError(f"redis-server not ready after {START_TIMEOUT_S}s")
            time.sleep(0.005)

    def _ping(self) -> bytes | None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).split(b"\r\n", 1)[0]  # "-LOADING ..." while it reads the AOF
        except OSError:
            return None

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise ServerError("redis-server is not running")
        self.proc.send_signal(sig)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM: a clean shutdown (the AOF is flushed)."""
        if self.paused:
            self.resume()
        self._signal(signal.SIGTERM)
        assert self.proc is not None
        self.proc.wait(timeout_s)

    def kill(self) -> None:
        """SIGKILL: a crash; only what reached the AOF survives."""
        self._signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(10)
        self.paused = False

    def pause(self) -> None:
        """SIGSTOP: the server hangs (connections stay open, nothing is answered)."""
        self._signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self.paused = False

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # SIGKILL ends a stopped process too
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)
        _live.pop(id(self), None)


# -- PostgreSQL -----------------------------------------------------------------------------


def _as_postgres(command: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the ``postgres`` user then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


def _pg_ctl_quietly(data: Path, *args: str) -> int:
    result = subprocess.run(
        _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), *args]),
        cwd=data.parent, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    return result.returncode


class PrivatePostgres:
    """A PostgreSQL cluster of its own (trust auth, default durability) on a free port."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.data = directory / "data"
        self.log = directory / "postgres.log"
        self.port = 0

    @classmethod
    def create(cls) -> PrivatePostgres:
        for tool in ("initdb", "pg_ctl", "postgres"):
            if not os.access(PG_BIN / tool, os.X_OK):
                missing(f"PostgreSQL's {tool} (looked in {PG_BIN}; set FLASHSALE_TEST_PG_BIN)")
        if os.geteuid() == 0 and shutil.which("runuser") is None:
            missing("runuser (needed to run initdb as the postgres user)")
        server = cls(_server_dir("pg"))
        _live[id(server)] = server
        try:
            if os.geteuid() == 0:
                try:
                    shutil.chown(server.dir, user="postgres", group=None)
                except LookupError:
                    missing("the 'postgres' OS user (initdb refuses to run as root)")
            server._initdb()
            _start_on_a_free_port(server, "postgres")
        except BaseException:
            server.cleanup()
            raise
        return server

    def _initdb(self) -> None:
        # --no-sync only skips flushing the freshly made cluster; the server runs with fsync on
        result = subprocess.run(
            _as_postgres([
                str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                "-E", "UTF8", "--no-locale", "--no-sync", "--no-instructions",
            ]),
            cwd=self.dir, capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise ServerError(f"initdb failed:\n{result.stderr.decode(errors='replace')}")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def start(self) -> None:
        """Start (again) on the same port; ``pg_ctl -w`` polls until it accepts connections."""
        options = " ".join([
            f"-p {self.port}",
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={shlex.quote(str(self.dir))}",
            "-c shared_buffers=16MB",
        ])  # fmt: skip
        code = _pg_ctl_quietly(
            self.data, "-l", str(self.log), "-o", options, "-w", "-t", str(int(START_TIMEOUT_S)),
            "start",
        )  # fmt: skip
        if code != 0:
            raise ServerError(f"pg_ctl start failed ({code}):\n{_tail(self.log)}")

    def stop(self, mode: str = "immediate") -> None:
        """``pg_ctl stop -m <mode>``; "immediate" is a crash: no checkpoint, recovery at start."""
        code = _pg_ctl_quietly(self.data, "stop", "-m", mode, "-w", "-t", "30")
        if code != 0:
            raise ServerError(f"pg_ctl stop failed ({code}):\n{_tail(self.log)}")

    def cleanup(self) -> None:
        if self.running:
            _pg_ctl_quietly(self.data, "stop", "-m", "immediate", "-w", "-t", "10")
            pid = _read_pid(self.data / "postmaster.pid")
            if pid is not None:
                _kill_if_in(pid, self.data)
        shutil.rmtree(self.dir, ignore_errors=True)
        _live.pop(id(self), None)


# -- fixtures -------------------------------------------------------------------------------
# Import them into a test module (``private_redis = servers.private_redis``) to use them.


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis.create()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres.create()
    try:
        yield server
    finally:
        server.cleanup()
