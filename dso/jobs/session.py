"""One loop session: broker + HTTP API + Ray + runner, with signal handling and the summary at the end.

Used by ``dso run`` (local Ray, embedded Valkey unless a URL is given) and by
``python -m dso.jobs.align`` (an existing cluster via ``ray job submit``).
Start order: broker, then the API (``loop.api_enabled``; a busy port fails here,
before any actor starts), then Ray and the actors; stop order is the reverse.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import ray
from rich.console import Console

from dso.broker.broker import Broker
from dso.broker.server import BrokerServerError
from dso.config import Settings, load_settings
from dso.jobs.loop_api import LoopApi, start_loop_api
from dso.jobs.runner import LoopRunner
from dso.jobs.summary import LoopSummary, print_summary

log = logging.getLogger(__name__)


def session_settings(
    config: str | Path | None,
    duration_s: float | None,
    redis_url: str | None,
    api: bool | None = None,
    host: str | None = None,
    port: int | None = None,
) -> Settings:
    """Config file (default: the embedded tiny config) with the command-line overrides applied."""
    settings = load_settings(config or "tiny")
    if host is not None:
        settings.api.host = host
    if port is not None:
        settings.api.port = port
    if duration_s is not None:
        settings.loop.duration_s = duration_s
    if redis_url:
        settings.broker.redis_url = redis_url
    if api is not None:
        settings.loop.api_enabled = api
    return settings


def run_dir_of(settings: Settings) -> Path:
    return Path(settings.loop.run_dir or settings.broker.run_dir).resolve()


def _open_broker(settings: Settings, attempts: int = 3) -> Broker:
    """Open the broker; an embedded server that lost its port to a racing process gets another try."""
    for attempt in range(1, attempts + 1):
        try:
            return Broker.open(settings.broker)
        except BrokerServerError as exc:
            if settings.broker.redis_url or attempt == attempts or "already served" in str(exc):
                raise
            log.warning("embedded Valkey did not start (%s); retrying", str(exc).splitlines()[0])
            time.sleep(0.5 * attempt)
    raise AssertionError("unreachable")


def _init_ray(settings: Settings, address: str | None) -> bool:
    """Connect to ``address`` (or the job's cluster), else start a local Ray; returns whether we started it."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    common = {"include_dashboard": False, "log_to_driver": True, "ignore_reinit_error": True}
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or os.environ["RAY_ADDRESS"], **common)
        return False
    ray.init(address="local", num_cpus=settings.loop.ray_num_cpus or os.cpu_count(), **common)
    return True


def _install_stop_handlers(stop: threading.Event) -> dict:
    previous = {}
    if threading.current_thread() is not threading.main_thread():
        return previous

    def handler(signum, _frame):
        if stop.is_set():  # a second Ctrl-C: the default behaviour (stop now)
            raise KeyboardInterrupt
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    return previous


def run_loop(
    settings: Settings,
    ray_address: str | None = None,
    console: Console | None = None,
    stop: threading.Event | None = None,
) -> LoopSummary:
    """Run the whole loop until ``loop.duration_s`` passes or SIGINT/SIGTERM; print and return the summary."""
    console = console or Console()
    stop = stop or threading.Event()
    run_dir = run_dir_of(settings)
    run_dir.mkdir(parents=True, exist_ok=True)
    broker = _open_broker(settings)  # owns the embedded Valkey when no URL is configured
    server = broker.connection.server  # the embedded Valkey this session owns and supervises (None with a URL)
    if server is not None:
        server.on_restart = lambda line: console.print(line, style="yellow", markup=False)
    # actors connect by URL (the embedded server's is only known now) and wait for a server that is restarting
    wait_s = max(settings.broker.connect_wait_s, settings.broker.server_start_timeout_s)
    actor_broker = {"redis_url": broker.url, "connect_wait_s": wait_s}
    settings = settings.model_copy(update={"broker": settings.broker.model_copy(update=actor_broker)})
    console.print(f"broker: {broker.url}   run dir: {run_dir}   adapters: {broker.adapters.url}")
    started_ray = False
    runner: LoopRunner | None = None
    api: LoopApi | None = None
    endpoints: dict[str, object] = {}
    previous = _install_stop_handlers(stop)
    started = time.monotonic()
    try:
        if settings.loop.api_enabled:
            api = start_loop_api(settings, broker, _component_checks(settings, lambda: runner), console)
            endpoints.update(api.endpoints())
        started_ray = _init_ray(settings, ray_address)
        runner = LoopRunner(settings, broker, run_dir, console)
        runner.start()
        endpoints["process_metrics"] = _process_metrics(runner, console)
        console.print(
            f"loop running: {settings.loop.generators} generator(s), {settings.loop.simulators} simulator(s), 1 learner "
            f"({settings.objective.name}); " + (f"{settings.loop.duration_s:g} s" if settings.loop.duration_s else "Ctrl-C to stop")
        )
        runner.supervise(stop, settings.loop.duration_s)
    finally:
        console.print("stopping...")
        if runner is not None:
            runner.stop()
        summary = None
        try:
            if runner is not None:
                summary = runner.summary(time.monotonic() - started, endpoints)
                print_summary(summary, console)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if api is not None:
                api.stop()
            if started_ray:
                ray.shutdown()
            broker.close()
    return summary


def _component_checks(
    settings: Settings, current_runner: Callable[[], LoopRunner | None]
) -> dict[str, Callable[[], bool]]:
    """/readyz checks per role; ``current_runner()`` is None until the actors exist (not ready yet)."""
    roles = ["generator", "learner"] + (["simulator"] if settings.loop.simulators else [])
    timeout = settings.api.readiness_timeout_s

    def check(role: str) -> Callable[[], bool]:
        def alive() -> bool:
            runner = current_runner()
            return runner is not None and runner.alive(role, timeout)

        return alive

    return {role: check(role) for role in roles}


def _process_metrics(runner: LoopRunner, console: Console) -> dict[str, str]:
    try:
        urls = runner.metrics_urls()
    except Exception as exc:  # noqa: BLE001 - the loop runs without exporters too
        log.warning("could not list the actors' metrics endpoints: %s", exc)
        return {}
    if urls:
        console.print("metrics: " + "  ".join(f"{name} {url}" for name, url in urls.items()))
    return urls
