"""Prometheus metrics of every loop process: definitions, small recording helpers, the scrape server.

Why one module: generators, simulators, the learner and the API all export the
same metric families, so a PromQL sum over processes is meaningful. It needs only
``prometheus_client`` (no FastAPI, no Ray); the broker collector and the target
registry take a broker / Redis client as an argument.

Conventions: prefix ``dso_``, base units (seconds), counters end in ``_total``,
no ids as labels (``result``, ``component``, ``stream`` have a few fixed values).
The stability rate is computed from counters, so it survives restarts and sums
over workers::

    sum(rate(dso_samples_labelled_total{result="stable"}[5m]))
      / sum(rate(dso_samples_labelled_total{result=~"stable|unstable"}[5m]))

What each process calls (see docs/api.md, "Metrics"):

* generator: ``observe_generated(n, seconds)`` per batch, ``set_adapter_version("generator", v)`` and
  ``observe_publish_to_adopt(seconds)`` after a hot swap;
* simulator: ``observe_labelled(verdict, seconds)`` per verdict;
* learner: ``observe_learner_step(loss, seconds)``, ``observe_staleness(versions)`` per batch,
  ``observe_adapter_published()`` and ``set_adapter_version("learner", v)`` per publish;
* every process, once at start: ``start_process_metrics(component, settings.api, broker)``: serves
  ``/metrics`` and announces it so Prometheus finds it through the API's HTTP service discovery
  (``GET /v1/metrics/targets``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dso.sim.verdict import Outcome, Verdict

log = logging.getLogger(__name__)

LABELLED_RESULTS = tuple(outcome.value for outcome in Outcome)  # the verdict's own classification
COMPONENTS = ("generator", "simulator", "learner", "canary", "api")
# canary scores exported as dso_canary_<name> gauges (dso.broker.promotion.CanaryRecord.scores keys)
CANARY_SCORES = ("stable_ratio", "paired_drift", "chamfer", "fscore", "footprint_ratio", "diversity")
DECISIONS = ("promoted", "refused", "superseded", "baseline")

# buckets in seconds: a tiny CPU model generates in ~0.1 s, TRELLIS-L batches take tens of seconds
GENERATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0)
SIMULATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STALENESS_BUCKETS = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0)  # adapter versions
ADOPT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class LoopMetrics:
    """Every metric family a loop process may export, registered on one registry."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self.registry = registry
        kw: dict[str, Any] = {"registry": registry}
        self.samples_generated = Counter("dso_samples_generated", "Samples generated (shapes sampled by generators).", **kw)
        self.samples_labelled = Counter(
            "dso_samples_labelled",
            "Samples labelled by the simulator, by result: stable, unstable, invalid (unusable input), error "
            "(simulator error or timeout).",
            ["result"],
            **kw,
        )
        for result in LABELLED_RESULTS:  # every series exists from the start, so rate() sees the first event
            self.samples_labelled.labels(result)
        self.generation_batch_duration = Histogram(
            "dso_generation_batch_duration_seconds", "Wall time of one generator batch.", buckets=GENERATION_BUCKETS, **kw
        )
        self.simulation_duration = Histogram(
            "dso_simulation_duration_seconds", "Wall time of one stability simulation.", buckets=SIMULATION_BUCKETS, **kw
        )
        self.learner_steps = Counter("dso_learner_steps", "Optimizer steps taken by the learner.", **kw)
        self.learner_loss = Gauge("dso_learner_loss", "Loss of the learner's latest step.", **kw)
        self.learner_step_duration = Histogram(
            "dso_learner_step_duration_seconds", "Wall time of one learner step.", buckets=STEP_BUCKETS, **kw
        )
        self.adapters_published = Counter("dso_adapters_published", "Adapter versions published by the learner.", **kw)
        self.adapter_version = Gauge(
            "dso_adapter_version", "Adapter version a component currently uses (0: base model).", ["component"], **kw
        )
        self.sample_staleness = Histogram(
            "dso_sample_staleness_versions",
            "Adapter versions between a training sample's generator and the learner's current adapter.",
            buckets=STALENESS_BUCKETS,
            **kw,
        )
        self.publish_to_adopt = Histogram(
            "dso_adapter_publish_to_adopt_seconds",
            "Time from an adapter's publication to a generator sampling from it.",
            buckets=ADOPT_BUCKETS,
            **kw,
        )
        self.http_requests = Counter(
            "dso_http_requests", "HTTP requests served by the API.", ["method", "route", "status"], **kw
        )
        self.http_duration = Histogram(
            "dso_http_request_duration_seconds",
            "Latency of API requests (until the response starts).",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            **kw,
        )
        self.prompt_uploads = Counter(
            "dso_prompt_uploads", "Prompt images offered to the API, by outcome.", ["result"], **kw
        )
        for result in ("created", "duplicate", "rejected"):
            self.prompt_uploads.labels(result)
        self.adapter_downloads = Counter(
            "dso_adapter_downloads", "Adapter downloads served by the API (304s included).", ["kind"], **kw
        )
        for kind in ("file", "archive"):
            self.adapter_downloads.labels(kind)
        self.canary_scores = {
            name: Gauge(f"dso_canary_{name}", f"Canary {name.replace('_', ' ')} of the latest scored adapter version.", **kw)
            for name in CANARY_SCORES
        }
        self.canary_version = Gauge("dso_canary_version", "Adapter version the canary scored last.", **kw)
        self.canary_decisions = Counter(
            "dso_canary_decisions", "Promotion decisions on candidate adapters, by decision.", ["decision"], **kw
        )
        for decision in DECISIONS:
            self.canary_decisions.labels(decision)
        self.canary_duration = Histogram(
            "dso_canary_duration_seconds", "Wall time the canary spent scoring one candidate.", buckets=GENERATION_BUCKETS, **kw
        )
        self.promoted_version = Gauge("dso_adapter_promoted_version", "Adapter version promoted to the fleet (0: base).", **kw)

    # --- recording helpers (the calls the loop makes) ---------------------------------

    def observe_generated(self, n: int, seconds: float) -> None:
        """One generator batch of ``n`` samples that took ``seconds``."""
        if n < 0 or seconds < 0:
            raise ValueError(f"n and seconds must be >= 0, got n={n}, seconds={seconds}")
        self.samples_generated.inc(n)
        self.generation_batch_duration.observe(seconds)

    def observe_labelled(self, verdict: Verdict | Outcome | str, seconds: float | None = None) -> str:
        """One verdict (or just its outcome); returns its result label. ``seconds`` defaults to the verdict's elapsed_s."""
        result = labelled_result(verdict)
        self.samples_labelled.labels(result).inc()
        if seconds is None and isinstance(verdict, Verdict):
            seconds = verdict.elapsed_s
        if seconds is not None:
            self.simulation_duration.observe(float(seconds))
        return result

    def observe_learner_step(self, loss: float, seconds: float) -> None:
        self.learner_steps.inc()
        self.learner_loss.set(float(loss))
        self.learner_step_duration.observe(seconds)

    def observe_adapter_published(self, version: int | None = None) -> None:
        self.adapters_published.inc()
        if version is not None:
            self.set_adapter_version("learner", version)

    def set_adapter_version(self, component: str, version: int) -> None:
        if component not in COMPONENTS:
            raise ValueError(f"component must be one of {', '.join(COMPONENTS)}, got {component!r}")
        self.adapter_version.labels(component).set(version)

    def observe_staleness(self, versions: Iterable[int]) -> None:
        """Staleness (current version - sample's version) of each sample in a training batch."""
        for value in versions:
            if value < 0:
                raise ValueError(f"staleness must be >= 0 versions, got {value}")
            self.sample_staleness.observe(value)

    def observe_publish_to_adopt(self, seconds: float) -> None:
        self.publish_to_adopt.observe(max(0.0, seconds))

    def observe_canary(self, version: int, decision: str, scores: Mapping[str, float], seconds: float, promoted: int) -> None:
        """One canary decision: its scores (by CANARY_SCORES name), the decision and the promoted version after it."""
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
        self.canary_decisions.labels(decision).inc()
        if decision in ("superseded",):
            return
        self.canary_version.set(version)
        for name, gauge in self.canary_scores.items():
            value = scores.get(name)
            if value is not None:
                gauge.set(float(value))
        self.canary_duration.observe(max(0.0, seconds))
        self.promoted_version.set(promoted)


def labelled_result(verdict: Verdict | Outcome | str) -> str:
    """'stable' | 'unstable' | 'invalid' | 'error': the verdict's ``outcome`` (or an outcome / its name)."""
    if isinstance(verdict, Verdict):
        return verdict.outcome.value
    try:
        return Outcome(verdict).value
    except ValueError:
        raise ValueError(f"result must be one of {', '.join(LABELLED_RESULTS)}, got {verdict!r}") from None


def adoption_latency(manifest_created_at: str | datetime, now: float | None = None) -> float:
    """Seconds since an adapter manifest's ``created_at`` (ISO 8601, UTC) - the publish-to-adopt latency."""
    created = datetime.fromisoformat(manifest_created_at) if isinstance(manifest_created_at, str) else manifest_created_at
    return (time.time() if now is None else now) - created.timestamp()


# The process-wide instance on prometheus_client's default registry (which also carries
# process_* and python_* metrics). Module-level helpers below record into it.
METRICS = LoopMetrics(REGISTRY)


def observe_generated(n: int, seconds: float) -> None:
    METRICS.observe_generated(n, seconds)


def observe_labelled(verdict: Verdict | Outcome | str, seconds: float | None = None) -> str:
    return METRICS.observe_labelled(verdict, seconds)


def observe_learner_step(loss: float, seconds: float) -> None:
    METRICS.observe_learner_step(loss, seconds)


def observe_adapter_published(version: int | None = None) -> None:
    METRICS.observe_adapter_published(version)


def set_adapter_version(component: str, version: int) -> None:
    METRICS.set_adapter_version(component, version)


def observe_staleness(versions: Iterable[int]) -> None:
    METRICS.observe_staleness(versions)


def observe_publish_to_adopt(seconds: float) -> None:
    METRICS.observe_publish_to_adopt(seconds)


def observe_canary(version: int, decision: str, scores: Mapping[str, float], seconds: float, promoted: int) -> None:
    METRICS.observe_canary(version, decision, scores, seconds, promoted)


# --- the scrape endpoint of a loop process ---------------------------------------------


@dataclass
class MetricsServer:
    """A running ``/metrics`` HTTP endpoint (prometheus_client's threaded server)."""

    host: str
    port: int
    server: Any
    thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_metrics_server(
    port: int = 9100,
    host: str = "127.0.0.1",  # loopback unless asked: callers pass api.host (0.0.0.0 in the Helm chart)
    span: int = 1,
    registry: CollectorRegistry = REGISTRY,
) -> MetricsServer:
    """Serve ``registry`` on the first free port in ``[port, port + span)`` (port 0: any free port).

    Several loop processes on one host (Ray actors) pass the same ``port`` and a
    ``span`` > 1 and each gets its own port; announce it with ``MetricsTargets``.
    """
    if span < 1:
        raise ValueError(f"span must be >= 1, got {span}")
    candidates = [0] if port == 0 else range(port, port + span)
    last_error: OSError | None = None
    for candidate in candidates:
        try:
            server, thread = start_http_server(candidate, addr=host, registry=registry)
        except OSError as exc:
            last_error = exc
            continue
        return MetricsServer(host, int(server.server_address[1]), server, thread)
    raise OSError(f"no free metrics port in [{port}, {port + span}) on {host}: {last_error}")


def advertised_host(bind_host: str) -> str:
    """The address other machines should scrape: the bind address, or this host's IP when bound to all."""
    if bind_host not in ("0.0.0.0", "::", ""):
        return bind_host
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.255.255.255", 1))  # no packet is sent; picks the outgoing interface
            return probe.getsockname()[0]
    except OSError:
        return "127.0.0.1"


# --- service discovery: where every process's /metrics is --------------------------------


class MetricsTargets:
    """Scrape targets of one run, kept in Redis with a TTL; served to Prometheus as HTTP SD JSON.

    Each process announces ``host:port`` under its component (generator, simulator, ...)
    and re-announces at least every ``ttl_s`` (a dead process's target expires).
    ``store`` keeps the entries: the run's ``broker.targets``
    (``dso.broker.metrics_targets.MetricsTargetStore``, which owns the Redis layout).
    """

    def __init__(self, store: Any, ttl_s: int = 60) -> None:
        self.store = store
        self.ttl_s = ttl_s

    def announce(self, component: str, address: str, now: float | None = None) -> None:
        if component not in COMPONENTS:
            raise ValueError(f"component must be one of {', '.join(COMPONENTS)}, got {component!r}")
        if ":" not in address:
            raise ValueError(f"address must be host:port, got {address!r}")
        expires = (time.time() if now is None else now) + self.ttl_s
        self.store.put(component, address, expires)

    def withdraw(self, component: str, address: str) -> None:
        self.store.remove(component, address)

    def live(self, now: float | None = None) -> list[tuple[str, str]]:
        """``(component, address)`` of every target not yet expired (expired ones are dropped)."""
        return self.store.live(time.time() if now is None else now)

    def http_sd(self, now: float | None = None) -> list[dict[str, Any]]:
        """Prometheus ``http_sd_configs`` groups: one per component."""
        groups: dict[str, list[str]] = {}
        for component, address in self.live(now):
            groups.setdefault(component, []).append(address)
        return [{"targets": addrs, "labels": {"component": comp}} for comp, addrs in sorted(groups.items())]


class TargetAnnouncer:
    """Re-announces one process's metrics target every ``interval_s`` from a daemon thread."""

    def __init__(self, targets: MetricsTargets, component: str, address: str, interval_s: float | None = None) -> None:
        self.targets = targets
        self.component = component
        self.address = address
        self.interval_s = interval_s if interval_s is not None else max(1.0, targets.ttl_s / 3)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> TargetAnnouncer:
        self.targets.announce(self.component, self.address)  # fail loudly on the first one
        self._thread = threading.Thread(target=self._run, name=f"metrics-target-{self.component}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.targets.announce(self.component, self.address)
            except Exception as exc:  # noqa: BLE001 - keep trying; Redis may come back
                log.warning("could not re-announce metrics target %s: %s", self.address, exc)

    def stop(self, withdraw: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if withdraw:
            try:
                self.targets.withdraw(self.component, self.address)
            except Exception as exc:  # noqa: BLE001
                log.warning("could not withdraw metrics target %s: %s", self.address, exc)


METRICS_PORT_ENV = "DSO_METRICS_PORT"  # set by the Helm chart in Ray and simulator pods


@dataclass
class ProcessMetrics:
    """A loop process's running exporter and its service-discovery announcement."""

    server: MetricsServer
    announcer: TargetAnnouncer | None

    def stop(self) -> None:
        if self.announcer is not None:
            self.announcer.stop()
        self.server.stop()


def start_process_metrics(
    component: str,
    api_settings: Any,
    broker: Any = None,
    host: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> ProcessMetrics:
    """The one call a loop process makes at start: serve ``/metrics`` and announce it.

    The port is ``$DSO_METRICS_PORT`` if set, else ``api_settings.metrics_port``
    (``settings.api``); the next ``metrics_port_span - 1`` ports are tried when it is
    taken (several actors on one host). It binds ``host`` (default ``api_settings.host``:
    127.0.0.1 unless configured, as the API, so metrics are never more exposed than the API).
    With a ``dso.broker.Broker`` the address is announced for the API's HTTP service
    discovery and kept fresh by a daemon thread.
    """
    host = api_settings.host if host is None else host
    env = os.environ if environ is None else environ
    port = int(env.get(METRICS_PORT_ENV, api_settings.metrics_port))
    server = start_metrics_server(port, host=host, span=api_settings.metrics_port_span)
    announcer = None
    if broker is not None:
        targets = MetricsTargets(broker.targets, api_settings.target_ttl_s)
        address = f"{advertised_host(host)}:{server.port}"
        try:
            announcer = TargetAnnouncer(targets, component, address).start()
        except Exception as exc:  # noqa: BLE001 - scraping by port still works without discovery
            log.warning("could not announce metrics target %s: %s", address, exc)
    return ProcessMetrics(server, announcer)


# --- broker state read at scrape time (the API process exports it, once per run) --------------


class BrokerCollector(Collector):
    """Queue depths, dead letters, replay and prompt counts, per-version stability and canary scores, read from Redis.

    Registered by the API only: these are facts about the shared broker, so one
    exporter per run keeps PromQL sums right. A Redis outage reads as ``dso_broker_up 0``.
    """

    # Families also defined by LoopMetrics (the canary sets them in its own process). In the API's
    # exposition the broker's reading replaces the process's copy: it is the run's truth even where no
    # canary runs in this process, and one family name must not appear twice in one exposition.
    REPLACES = frozenset({"dso_adapter_promoted_version"})

    def __init__(self, broker: Any, recent_versions: int = 10) -> None:
        self.broker = broker
        self.recent_versions = recent_versions

    def describe(self) -> list[Any]:
        return []  # unchecked collector: families depend on the broker's state

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily("dso_broker_up", "1 when the API can read the broker (Redis).")
        try:
            families = list(self._families())
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail because Redis is away
            log.warning("broker metrics unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self) -> Iterator[Any]:
        broker = self.broker
        length = GaugeMetricFamily("dso_queue_length", "Entries in a stream.", labels=["stream"])
        lag = GaugeMetricFamily("dso_queue_lag", "Entries not yet delivered to the stream's group.", labels=["stream"])
        pending = GaugeMetricFamily(
            "dso_queue_pending", "Entries delivered but not yet acknowledged.", labels=["stream"]
        )
        for queue in (broker.samples, broker.labelled):
            depth = queue.depth()
            length.add_metric([queue.name], depth.length)
            lag.add_metric([queue.name], depth.lag)
            pending.add_metric([queue.name], depth.pending)
        yield from (length, lag, pending)
        dead = GaugeMetricFamily("dso_dead_letters", "Entries in the dead-letter stream (capped, newest kept).")
        dead.add_metric([], broker.samples.dead_letter_count())
        yield dead
        replay = GaugeMetricFamily("dso_replay_samples", "Labelled samples in the replay buffer.", labels=["class"])
        for cls, count in broker.replay.counts().items():
            replay.add_metric([cls], count)
        yield replay
        prompts = GaugeMetricFamily("dso_prompts_active", "Prompt images the generators sample from.")
        prompts.add_metric([], len(broker.prompts.active()))
        yield prompts
        latest = broker.registry.latest()
        latest_family = GaugeMetricFamily("dso_adapter_latest_version", "Newest published adapter version.")
        latest_family.add_metric([], latest if latest is not None else 0)
        yield latest_family
        yield from self._per_version(broker)
        yield from self._promotion(broker)

    def _promotion(self, broker: Any) -> Iterator[Any]:
        promotion = broker.promotion
        promoted = GaugeMetricFamily("dso_adapter_promoted_version", "Adapter version promoted to the fleet (0: base).")
        promoted.add_metric([], promotion.promoted())
        yield promoted
        records = promotion.all()
        decisions = GaugeMetricFamily(
            "dso_adapter_decisions", "Adapter versions by the gate's decision on them (the whole run, from the broker).",
            labels=["decision"],
        )
        counts = dict.fromkeys(DECISIONS, 0)
        for record in records.values():
            counts[str(record.decision)] = counts.get(str(record.decision), 0) + 1
        for decision, count in counts.items():
            decisions.add_metric([decision], count)
        yield decisions
        scores = {
            name: GaugeMetricFamily(
                f"dso_adapter_canary_{name}",
                f"Canary {name.replace('_', ' ')} of one adapter version on the probe set (newest scored versions "
                "and the base model, version 0).",
                labels=["adapter_version"],
            )
            for name in CANARY_SCORES
        }
        shown = set(sorted(records)[-self.recent_versions :]) | ({0} & records.keys())  # the baseline: the ratios' reference
        for version in sorted(shown):
            for name, family in scores.items():
                value = records[version].scores.get(name)
                if value is not None:
                    family.add_metric([str(version)], float(value))
        yield from scores.values()

    def _per_version(self, broker: Any) -> Iterator[Any]:
        snapshot = broker.stats.snapshot()
        ratio = GaugeMetricFamily(
            "dso_adapter_stability_ratio",
            "Stable / (stable + unstable) of all samples made by one adapter version (newest versions only).",
            labels=["adapter_version"],
        )
        labelled = GaugeMetricFamily(
            "dso_adapter_samples_labelled", "Samples labelled per adapter version (newest versions only).",
            labels=["adapter_version"],
        )
        by_version = snapshot.get("by_version", {})
        for version in sorted(by_version)[-self.recent_versions :]:
            stats = by_version[version]
            labelled.add_metric([str(version)], stats["labelled"])
            if stats.get("stability_rate") is not None:
                ratio.add_metric([str(version)], stats["stability_rate"])
        yield from (ratio, labelled)
        window = snapshot.get("window", {})
        window_rate = GaugeMetricFamily(
            "dso_window_stability_ratio", "Stability rate over the broker's sliding window of recent verdicts."
        )
        if window.get("stability_rate") is not None:
            window_rate.add_metric([], window["stability_rate"])
        yield window_rate
        learner = snapshot.get("learner", {})
        step = GaugeMetricFamily("dso_learner_step", "The learner's latest step, as recorded in the broker.")
        if "step" in learner:
            step.add_metric([], learner["step"])
        yield step
