"""Start, supervise and stop the loop's Ray actors; the part shared by ``dso run`` and the cluster job.

Supervision: every actor's ``run()`` is a long Ray task. If the actor dies
(SIGKILL, OOM, node loss) Ray restarts it (``max_restarts``) and the runner
calls ``run()`` again: a restarted learner resumes from its checkpoint, a
restarted simulator's unacked item is reclaimed by the others. Restarts are
budgeted per time window, not per run (``loop.restart_budget`` crashes per
``loop.restart_window_s``), so an actor killed now and then always comes back,
while one that crashes in a tight loop is reported failed; each re-issue waits
an exponential backoff (``loop.restart_backoff_s`` .. ``restart_backoff_max_s``),
then until the actor answers a ping: while Ray brings a killed actor's process back
it is "unavailable", and a loop issued then would fail at once and count as
another crash (one SIGKILL used to spend four restarts of the budget).

Shutdown order: generators first (no new samples), then simulators and the
learner, which checkpoints on the way out. Entries still pending stay in the
streams and are reclaimed on the next start.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayError
from rich.console import Console

from dso.actors.prompt_images import seed_default_prompts
from dso.actors.ray_actors import CanaryActor, GeneratorActor, LearnerActor, SimulatorActor, actor_options
from dso.broker.broker import Broker
from dso.config import Settings
from dso.jobs.summary import LoopSummary, collect_summary, progress_line

log = logging.getLogger(__name__)
DRAIN_POLL_S = 0.1  # how often the drain reads the backlog (a Redis round trip)
READY_POLL_S = 0.5  # how often an actor that Ray is restarting is pinged until it answers


@dataclass
class _Supervised:
    role: str
    name: str
    handle: Any
    ref: Any = None
    restarts: int = 0
    result: dict[str, Any] | None = None
    failed: bool = False
    failure: str | None = None  # why it was given up on (one line)
    crashes: list[float] = field(default_factory=list)  # monotonic times of crashes inside the restart window
    restart_at: float | None = None  # when its run() is re-issued (after the backoff)
    ping: Any = None  # ready() sent before re-issuing run(): the actor may still be coming back


@dataclass
class LoopRunner:
    """The actors of one run, over one broker."""

    settings: Settings
    broker: Broker
    run_dir: Path
    console: Console = field(default_factory=Console)
    actors: list[_Supervised] = field(default_factory=list)
    backlog_after_drain: int | None = None  # entries still queued when the drain ended (None: not drained / unknown)

    def start(self) -> None:
        """Seed prompts if none, create every actor, wait until they are constructed, start their loops."""
        added = seed_default_prompts(self.broker.prompts, self.settings)
        if added:
            self.console.print(f"seeded {added} default training prompts")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        options = actor_options(self.settings)
        url = self.broker.url
        loop = self.settings.loop
        for i in range(loop.generators):
            self._add("generator", f"generator-{i}", GeneratorActor.options(**options["generator"]).remote(self.settings, url, f"generator-{i}"))
        for i in range(loop.simulators):
            self._add("simulator", f"simulator-{i}", SimulatorActor.options(**options["simulator"]).remote(self.settings, url, f"simulator-{i}"))
        self._add(
            "learner", "learner-0",
            LearnerActor.options(**options["learner"]).remote(self.settings, url, "learner-0", str(self.run_dir)),
        )
        if self.settings.canary.enabled:  # decides which publishes generators may run (else each is promoted)
            self._add("canary", "canary-0", CanaryActor.options(**options["canary"]).remote(self.settings, url, "canary-0"))
        ray.get([a.handle.ready.remote() for a in self.actors])
        for actor in self.actors:
            actor.ref = actor.handle.run.remote()

    def _add(self, role: str, name: str, handle: Any) -> None:
        self.actors.append(_Supervised(role, name, handle))

    def actor(self, name: str) -> Any:
        return next(a.handle for a in self.actors if a.name == name)

    def roles(self) -> list[str]:
        """The roles this run has actors for, in start order."""
        return list(dict.fromkeys(a.role for a in self.actors))

    def alive(self, role: str, timeout_s: float = 2.0) -> bool:
        """Every actor of ``role`` is looping and answers a ping within ``timeout_s`` (the API's /readyz)."""
        group = [a for a in self.actors if a.role == role]
        if not group or any(a.failed or a.ref is None for a in group):
            return False
        pings = [a.handle.ready.remote() for a in group]
        answered, _ = ray.wait(pings, num_returns=len(pings), timeout=timeout_s)
        if len(answered) < len(pings):
            return False
        try:
            ray.get(answered, timeout=timeout_s)  # a dead actor's ping is "done" too, with an error
        except RayError:
            return False
        return True

    def metrics_urls(self) -> dict[str, str]:
        """Actor name -> its Prometheus ``/metrics`` URL (actors without an exporter are left out)."""
        urls = ray.get([a.handle.metrics_url.remote() for a in self.actors], timeout=30)
        return {a.name: url for a, url in zip(self.actors, urls) if url}

    def supervise(self, stop: threading.Event, duration_s: float | None) -> None:
        """Watch the actors until ``stop`` is set or the duration ends; restart dead loops; show progress."""
        started = time.monotonic()
        last_progress = 0.0
        interval = self.settings.loop.progress_interval_s
        while not stop.is_set() and (duration_s is None or time.monotonic() - started < duration_s):
            refs = [a.ref for a in self.actors if a.ref is not None]
            done, _ = ray.wait(refs, num_returns=1, timeout=min(interval, 0.5)) if refs else ([], [])
            for ref in done:
                self._reap(ref, restart=True)
            self._restart_due()
            if time.monotonic() - last_progress >= interval:
                last_progress = time.monotonic()
                try:
                    self.console.print(progress_line(self.broker.stats.snapshot(), time.monotonic() - started))
                except Exception as exc:  # noqa: BLE001 - progress must never stop the loop
                    log.warning("progress unavailable: %s", exc)

    def _reap(self, ref: Any, restart: bool) -> None:
        actor = next(a for a in self.actors if a.ref == ref)
        try:
            actor.result = ray.get(ref)
            actor.ref = None
        except RayError as exc:  # the actor died (RayActorError) or its loop raised (RayTaskError)
            actor.ref = None
            if restart:
                self._schedule_restart(actor, exc)
            else:
                actor.failed, actor.failure = True, f"died while stopping ({type(exc).__name__})"
                log.error("%s failed: %s", actor.name, exc)

    def _schedule_restart(self, actor: _Supervised, exc: BaseException) -> None:
        """Re-issue ``run()`` after a backoff, unless the actor spent its restart budget in the window."""
        loop = self.settings.loop
        now = time.monotonic()
        actor.crashes = [t for t in actor.crashes if now - t < loop.restart_window_s] + [now]
        if len(actor.crashes) > loop.restart_budget:
            actor.failed, actor.restart_at = True, None
            actor.failure = f"crashed {len(actor.crashes)} times within {loop.restart_window_s:g} s ({type(exc).__name__})"
            self.console.print(f"{actor.name} failed: {actor.failure}; not restarted (loop.restart_budget)")
            log.error("%s failed: %s", actor.name, exc)
            return
        delay = min(loop.restart_backoff_max_s, loop.restart_backoff_s * 2 ** (len(actor.crashes) - 1))
        actor.restart_at = now + delay
        actor.restarts += 1
        self.console.print(
            f"{actor.name} died ({type(exc).__name__}); restarting its loop in {delay:.1f} s "
            f"(restart {actor.restarts}; {len(actor.crashes)} of {loop.restart_budget} in {loop.restart_window_s:g} s)"
        )

    def _restart_due(self) -> None:
        """Ping the actors whose backoff has passed; re-issue the loop of each that answered."""
        now = time.monotonic()
        for actor in self.actors:
            if actor.failed:
                continue
            if actor.ping is not None:
                self._answer(actor, now)
            elif actor.restart_at is not None and actor.restart_at <= now:
                actor.restart_at = None
                actor.ping = actor.handle.ready.remote()

    def _answer(self, actor: _Supervised, now: float) -> None:
        """Act on the ping's answer, if any: loop again; ping again while Ray restarts it; a crash when it died."""
        done, _ = ray.wait([actor.ping], num_returns=1, timeout=0)
        if not done:
            return
        ping, actor.ping = actor.ping, None
        try:
            ray.get(ping)
        except ActorUnavailableError:  # its process is being restarted: not another crash
            actor.restart_at = now + READY_POLL_S
            return
        except RayError as exc:  # dead for good (its constructor failed) or unreachable: counted
            self._schedule_restart(actor, exc)
            return
        actor.ref = actor.handle.run.remote()

    def health(self) -> dict[str, Any]:
        """Restarts per role and the actors given up on (name -> why), for the summary and the exit status."""
        restarts = {role: sum(a.restarts for a in self.actors if a.role == role) for role in self.roles()}
        failures = {a.name: a.failure or "failed" for a in self.actors if a.failed}
        server = self.broker.connection.server if self.broker is not None else None
        return {
            "restarts": restarts, "failures": failures, "backlog_after_drain": self.backlog_after_drain,
            "broker_restarts": server.restarts if server is not None else 0,
        }

    def drain(self) -> bool:
        """Let simulators and learner finish queued work; True when nothing is left.

        Waits as long as the backlog keeps shrinking (a full backlog of a healthy loop takes
        longer than any fixed timeout), and gives up after ``loop.drain_timeout_s`` without
        progress (a dead simulator), after ``loop.drain_max_s`` in all, or on a second Ctrl-C.
        """
        loop = self.settings.loop
        started = last_progress = last_report = time.monotonic()
        smallest: int | None = None
        try:
            while True:
                try:
                    backlog = self.broker.admission.backlog()
                except Exception as exc:  # noqa: BLE001 - a broker outage at shutdown: leave the rest pending
                    log.warning("cannot drain: %s", exc)
                    self.backlog_after_drain = None
                    return False
                self.backlog_after_drain = backlog
                if backlog == 0:
                    return True
                now = time.monotonic()
                if smallest is None or backlog < smallest:
                    smallest, last_progress = backlog, now
                if now - last_progress >= loop.drain_timeout_s or now - started >= loop.drain_max_s:
                    return False
                if now - last_report >= loop.progress_interval_s:
                    last_report = now
                    self.console.print(f"draining: {backlog} queued entries left (Ctrl-C again to leave them pending)")
                time.sleep(DRAIN_POLL_S)
        except KeyboardInterrupt:  # the second Ctrl-C: stop now, the rest stays pending
            return False

    def stop(self) -> None:
        """Generators first, drain, then simulators and learner; each gets ``loop.stop_timeout_s`` to finish."""
        for roles in (("generator", "canary"), ("simulator", "learner")):
            if roles[0] == "simulator" and not self.drain():
                self.console.print("queued work left pending; it is reclaimed on the next start")
            group = [a for a in self.actors if a.role in roles]
            for actor in group:
                try:
                    actor.handle.stop.remote()
                except RayActorError:
                    pass
            refs = [a.ref for a in group if a.ref is not None]
            if refs:
                done, _ = ray.wait(refs, num_returns=len(refs), timeout=self.settings.loop.stop_timeout_s)
                for ref in done:
                    self._reap(ref, restart=False)
        for actor in self.actors:
            if actor.ref is not None:
                log.error("%s did not stop within %.0f s; killing it", actor.name, self.settings.loop.stop_timeout_s)
            ray.kill(actor.handle, no_restart=True)

    def summary(self, seconds: float, endpoints: dict[str, Any] | None = None) -> LoopSummary:
        """Collect, attach restarts / failures / backlog, write summary.json; a broker that is gone gives a partial one."""
        try:
            summary = collect_summary(self.broker, self.run_dir, seconds, endpoints)
        except Exception as exc:  # noqa: BLE001 - the summary is written in every ending, from what is reachable
            log.warning("broker statistics unavailable for the summary: %s", exc)
            summary = LoopSummary.partial(self.run_dir, seconds, endpoints, f"broker statistics ({type(exc).__name__}: {exc})")
        health = self.health()
        summary.restarts, summary.failures = health["restarts"], health["failures"]
        summary.backlog_after_drain = health["backlog_after_drain"]
        summary.broker_restarts = health["broker_restarts"]
        (self.run_dir / "summary.json").write_text(summary.to_json())
        return summary
