"""Chaos bench: `dso run` under repeated SIGKILLs of its roles and of its Valkey; bounded in time, loopback only.

    python bench/chaos.py --duration 600          # the documented run: docs/chaos.json + "## Chaos" in docs/benchmarks.md
    python bench/chaos.py --duration 120 --simulator-kills 3 --generator-kills 1 --learner-kills 1 --valkey-kills 1 --no-docs

Runs `dso run` (the embedded default: tiny config, embedded Valkey, the API on a free 127.0.0.1 port) as a
subprocess in its own process group, in a fresh run directory. Once it labels, the faults are spread evenly
over the run (until ``--tail`` seconds before its end): SIGKILL to the role's Ray worker, found by its process
title (``ray::SimulatorActor`` ...) among the run's own descendants only, or to the Valkey server, which
`dso run` restarts from its append-only file. A fault waits until the previous faults of its role and of
Valkey have recovered (a Valkey kill waits for all), so each recovery time is the role's own. At ``--duration`` the whole group gets SIGINT, as a
terminal's Ctrl-C would send. Then the run's Valkey is opened again to account for every sample:

    lost        samples ever enqueued (the stream's entries-added) that are neither labelled (their id is
                in the replay buffer's seen set), nor still queued, nor dead-lettered: must be 0
    duplicated  replay-buffer records beyond one per sample id: must be 0

Time to recover is read from the broker every ``POLL_S``: from the kill to the role's next progress, i.e. a
simulator's next labelled output, a generator's next batch, the learner's next step or ingest (it counts the
labels), and after a Valkey kill the loop's next labelled sample.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import redis

from dso.broker.keys import KeySpace
from dso.broker.records import LabelledRecord
from dso.broker.replay import CLASSES
from dso.broker.server import EmbeddedValkey, make_client, read_server_info
from dso.config import Settings, load_settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdocs import DEFAULT_PATH as BENCHMARKS_MD  # noqa: E402
from benchdocs import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DSO = str(Path(sys.executable).with_name("dso"))
SECTION = "## Chaos"
CHAOS_JSON = ROOT / "docs" / "chaos.json"

ACTOR_TITLES = {"simulator": "ray::SimulatorActor", "generator": "ray::GeneratorActor", "learner": "ray::LearnerActor"}
DEFAULT_KILLS = {"simulator": 10, "generator": 3, "learner": 3, "valkey": 2}  # the minimum per 10 minutes
POLL_S = 0.25  # how often the broker is read for progress (the resolution of the recovery times)
FIRST_LABEL_TIMEOUT_S = 300.0  # start-up on 2 busy cores (Ray, model load) before the first label
RECOVERY_TIMEOUT_S = 120.0  # a fault not recovered by then is reported unrecovered; the next one goes ahead
TARGET_LOCATE_S = 30.0  # how long a kill waits for its role's process to (re)appear
STOP_TIMEOUT_S = 420.0  # after SIGINT: the drain (loop.drain_max_s) and the actors' stop, then SIGKILL
DURATION_MARGIN_S = 600.0  # `dso run --duration` is this much longer than the bench, which ends it by SIGINT
PROBE_TIMEOUT_S = 2.0  # socket timeouts of the progress reader (never blocks on a dead server)
RECOVERY_TARGET_P95_S = 30.0  # the target on 2 cores


@dataclass
class Fault:
    role: str  # simulator / generator / learner / valkey
    at_s: float = 0.0  # since `dso run` started
    pid: int | None = None
    recovered_s: float | None = None  # kill -> next progress of the role; None: not within RECOVERY_TIMEOUT_S
    skipped: str | None = None  # why it was not injected


@dataclass
class Plan:
    duration_s: float
    kills: dict[str, int]
    tail_s: float  # no fault in the last tail_s before SIGINT: room for the last one to recover
    config: str = "tiny"


@dataclass
class Progress:
    """One reading of the broker: the counters each role advances."""

    generated: int  # stats totals (generators' batches)
    labelled: int  # stats totals (the learner's first ingest of a sample id)
    labelled_out: int  # entries ever added to the labelled stream (simulators' outputs)
    learner_at: float  # wall time of the learner's newest step


class Probe:
    """Reads the run's progress from its broker; None while the server is down or not started yet."""

    def __init__(self, run_dir: Path, settings: Settings) -> None:
        self.data_dir = run_dir / "valkey"
        self.keys = KeySpace(settings.broker.key_prefix)
        self.labelled_stream = self.keys.stream(settings.broker.labelled_stream)
        self.client: redis.Redis | None = None

    def read(self) -> Progress | None:
        try:
            if self.client is None:
                info = read_server_info(self.data_dir)
                if info is None:
                    return None
                self.client = redis.Redis.from_url(
                    info["url"], socket_timeout=PROBE_TIMEOUT_S, socket_connect_timeout=PROBE_TIMEOUT_S
                )
            pipe = self.client.pipeline(transaction=False)
            pipe.hmget(self.keys.stats("totals"), ["generated", "labelled"])
            pipe.hget(self.keys.stats("learner"), "updated_at")
            pipe.exists(self.labelled_stream)
            (generated, labelled), learner_at, has_stream = pipe.execute()
            out = int(self.client.xinfo_stream(self.labelled_stream)["entries-added"]) if has_stream else 0
            return Progress(int(generated or 0), int(labelled or 0), out, float(learner_at or 0.0))
        except redis.RedisError:
            return None

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


def advanced(role: str, before: Progress, now: Progress, killed_wall: float) -> bool:
    """Whether ``role`` made progress since the kill."""
    if role == "simulator":
        return now.labelled_out > before.labelled_out
    if role == "generator":
        return now.generated > before.generated
    if role == "learner":  # a step, or an ingest (only the learner counts labels): it may wait for fresh samples
        return now.learner_at > killed_wall or now.labelled > before.labelled
    return now.labelled > before.labelled  # valkey: the whole loop labels again


def schedule(kills: dict[str, int]) -> list[str]:
    """Roles in kill order, each role's kills spread evenly (fault i of n at fraction (i + 0.5) / n)."""
    slots = [((i + 0.5) / n, role) for role, n in kills.items() for i in range(n)]
    return [role for _, role in sorted(slots)]


class LoopProcess:
    """`dso run` in its own process group, its output in a log file."""

    def __init__(self, plan: Plan, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.log_path = run_dir / "dso-run.log"
        env = {
            **os.environ,
            "DSO__BROKER__RUN_DIR": str(run_dir),
            "DSO__API__METRICS_PORT": "0",  # each actor's exporter on a free port
            "COLUMNS": "200",
        }
        command = [
            DSO, "run", "--config", plan.config, "--duration", f"{plan.duration_s + DURATION_MARGIN_S:g}",
            "--host", "127.0.0.1", "--port", "0",  # loopback only; the API on any free port
        ]
        run_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.started = time.monotonic()
        self.psutil = psutil.Process(self.process.pid)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def alive(self) -> bool:
        return self.process.poll() is None

    def descendants(self) -> list[psutil.Process]:
        try:
            return self.psutil.children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def find(self, role: str) -> psutil.Process | None:
        """The role's process: the run's Valkey, or the Ray worker titled after the role's actor class."""
        if role == "valkey":
            pid = (read_server_info(self.run_dir / "valkey") or {}).get("pid")
            return next((p for p in self.descendants() if p.pid == pid), None)
        for proc in self.descendants():
            try:
                title = " ".join(proc.cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if title.startswith(ACTOR_TITLES[role]):
                return proc
        return None

    def interrupt(self) -> int | None:
        """SIGINT to the whole group (a terminal's Ctrl-C); the exit code, or None when it had to be killed."""
        if self.alive():
            os.killpg(self.process.pid, signal.SIGINT)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return None

    def kill_all(self) -> None:
        """Whatever is left (a hung run, a bench that failed): the group, and descendants in their own sessions."""
        leftovers = self.descendants()
        if self.alive():
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
        for proc in leftovers:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        self._log.close()

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")


class Watcher(threading.Thread):
    """Polls the broker; the loop's first label and each fault's recovery are read from its readings."""

    def __init__(self, probe: Probe) -> None:
        super().__init__(name="chaos-watcher", daemon=True)
        self.probe = probe
        self.latest: Progress | None = None
        self.changed = threading.Condition()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(POLL_S):
            reading = self.probe.read()
            if reading is not None:
                with self.changed:
                    self.latest = reading
                    self.changed.notify_all()

    def wait_until(self, condition, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while not (self.latest is not None and condition(self.latest)):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)
        return True


def inject(loop: LoopProcess, watcher: Watcher, fault: Fault, until_s: float, log) -> threading.Thread | None:
    """SIGKILL the role's process; returns the thread that times its recovery (until ``until_s`` into the run)."""
    deadline = time.monotonic() + TARGET_LOCATE_S
    target = loop.find(fault.role)
    while target is None and time.monotonic() < deadline and loop.alive():
        time.sleep(POLL_S)
        target = loop.find(fault.role)
    if target is None:
        fault.skipped = "process not found"
        return None
    before = watcher.latest
    killed_wall, killed = time.time(), time.monotonic()
    fault.at_s, fault.pid = round(loop.elapsed(), 1), target.pid
    target.kill()
    log(f"[{fault.at_s:6.1f} s] killed {fault.role} (pid {fault.pid})")
    try:
        target.wait(timeout=TARGET_LOCATE_S)
    except psutil.TimeoutExpired:
        pass
    if fault.role != "valkey":  # the reading after its death: nothing it did before counts as recovery
        watcher.wait_until(lambda p: p is not before, POLL_S * 8)
        before = watcher.latest

    def measure() -> None:
        timeout = max(0.0, min(RECOVERY_TIMEOUT_S, until_s - loop.elapsed()))
        if watcher.wait_until(lambda p: advanced(fault.role, before, p, killed_wall), timeout):
            fault.recovered_s = round(time.monotonic() - killed, 2)
        outcome = f"recovered in {fault.recovered_s:.1f} s" if fault.recovered_s is not None else "NOT recovered"
        log(f"[{loop.elapsed():6.1f} s] {fault.role} killed at {fault.at_s:.1f} s: {outcome}")

    thread = threading.Thread(target=measure, name=f"recovery-{fault.role}", daemon=True)
    thread.start()
    return thread


def blocking(fault: Fault, earlier: list[tuple[Fault, threading.Thread]]) -> list[threading.Thread]:
    """The recoveries a fault waits for: its own role's and Valkey's (a Valkey kill waits for all), so that each
    recovery is the role's own; different roles' faults may overlap."""
    return [t for f, t in earlier if fault.role == "valkey" or f.role in (fault.role, "valkey")]


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def account(run_dir: Path, settings: Settings) -> dict[str, Any]:
    """Every sample accounted for, from the run's persisted broker (opened again after the run)."""
    broker = settings.broker
    keys = KeySpace(broker.key_prefix)
    with EmbeddedValkey(run_dir / "valkey") as server:
        client = make_client(server.url)
        samples_key, labelled_key = keys.stream(broker.samples_stream), keys.stream(broker.labelled_stream)
        enqueued = int(client.xinfo_stream(samples_key)["entries-added"]) if client.exists(samples_key) else 0
        seen_prefix = keys.seen("")
        labelled_ids = {k.decode()[len(seen_prefix):] for k in client.scan_iter(match=keys.seen("*"), count=1000)}

        def ids(stream: str) -> set[str]:
            return {fields[b"id"].decode() for _, fields in client.xrange(stream)} if client.exists(stream) else set()

        queued_samples, queued_labelled, dead = ids(samples_key), ids(labelled_key), ids(keys.stream(broker.dead_stream))
        accounted = labelled_ids | queued_samples | queued_labelled | dead
        records = client.hgetall(keys.replay("data"))
        record_ids = [LabelledRecord.from_bytes(payload).sample_id for payload in records.values()]
        listed = [m.decode() for cls in CLASSES for m in client.zrange(keys.replay(f"{cls}:arrival"), 0, -1)]
        client.close()
    return {
        "enqueued": enqueued,
        "labelled_ids": len(labelled_ids),
        "queued": len(queued_samples | queued_labelled),
        "dead_lettered": len(dead),
        "lost": enqueued - len(accounted),
        "replay_records": len(records),
        "duplicated": (len(record_ids) - len(set(record_ids))) + (len(listed) - len(set(listed))),
    }


def run_chaos(plan: Plan, run_dir: Path, log=print) -> dict[str, Any]:
    """Run the loop, inject the plan's faults, stop it with SIGINT to its group, account for every sample."""
    settings = load_settings(plan.config, environ={})
    faults = [Fault(role) for role in schedule(plan.kills)]
    loop = LoopProcess(plan, run_dir)
    watcher = Watcher(Probe(run_dir, settings))
    watcher.start()
    exit_code: int | None = None
    first_label_s = None
    try:
        if not watcher.wait_until(lambda p: p.labelled > 0, min(FIRST_LABEL_TIMEOUT_S, plan.duration_s)):
            raise SystemExit(f"the loop labelled nothing in time; see {loop.log_path}")
        first_label_s = round(loop.elapsed(), 1)
        last_fault_s = plan.duration_s - plan.tail_s
        window = max(0.0, last_fault_s - first_label_s)
        injected: list[tuple[Fault, threading.Thread]] = []
        for i, fault in enumerate(faults):
            slot = first_label_s + window * (i + 0.5) / len(faults)
            while loop.elapsed() < slot and loop.alive():
                time.sleep(POLL_S)
            for thread in blocking(fault, injected):
                thread.join(timeout=max(0.0, last_fault_s - loop.elapsed()))
            if loop.elapsed() > last_fault_s or not loop.alive():
                fault.skipped = "no time left" if loop.alive() else "dso run exited"
                log(f"[{loop.elapsed():6.1f} s] {fault.role} kill skipped: {fault.skipped}")
                continue
            thread = inject(loop, watcher, fault, plan.duration_s, log)
            if thread is not None:
                injected.append((fault, thread))
        while loop.elapsed() < plan.duration_s and loop.alive():
            time.sleep(POLL_S)
        for _, thread in injected:  # each ends by the duration
            thread.join()
        log(f"[{loop.elapsed():6.1f} s] SIGINT to the process group")
        exit_code = loop.interrupt()
        log(f"[{loop.elapsed():6.1f} s] dso run exited with {exit_code}")
    finally:
        watcher.done.set()
        watcher.join()
        watcher.probe.close()
        output = loop.output()
        loop.kill_all()
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    done = [f for f in faults if f.skipped is None and f.pid is not None]
    recoveries = [f.recovered_s for f in done if f.recovered_s is not None]
    totals = (summary or {}).get("totals", {})
    samples = {"generated": totals.get("generated"), "labelled": totals.get("labelled"), **account(run_dir, settings)}
    return {
        "date": datetime.now().isoformat(timespec="seconds"),
        "config": plan.config,
        "duration_s": plan.duration_s,
        "cores": os.cpu_count(),
        "first_label_s": first_label_s,
        "kills_planned": plan.kills,
        "kills_done": {role: sum(f.role == role for f in done) for role in plan.kills},
        "samples": samples,
        "recovery_s": {
            "p50": percentile(recoveries, 50), "p95": percentile(recoveries, 95), "max": max(recoveries, default=None),
            "unrecovered": len(done) - len(recoveries), "target_p95": RECOVERY_TARGET_P95_S,
            "by_role": {role: [f.recovered_s for f in done if f.role == role] for role in plan.kills},
        },
        "versions_published": len((summary or {}).get("versions_published", [])),
        "learner_steps": (summary or {}).get("learner", {}).get("step"),
        "restarts": (summary or {}).get("restarts", {}),
        "broker_restarts": (summary or {}).get("broker_restarts"),
        "problems": (summary or {}).get("problems"),
        "exit_code": exit_code,
        "summary_present": summary is not None,
        "tracebacks": output.count("Traceback"),
        "faults": [asdict(f) for f in faults],
        "run_dir": str(run_dir),
    }


def report_markdown(result: dict[str, Any]) -> str:
    s, r = result["samples"], result["recovery_s"]
    done, planned = result["kills_done"], result["kills_planned"]
    kills = ", ".join(f"{role} {done[role]}/{planned[role]}" for role in planned)
    by_role = "; ".join(f"{role} {', '.join(f'{v:g}' for v in vs if v is not None) or '-'}" for role, vs in r["by_role"].items())
    return f"""{SECTION}

`python bench/chaos.py --duration {result['duration_s']:g}` ({result['date']}, {result['cores']} cores, config `{result['config']}`):
`dso run` with the embedded Valkey in its own process group; SIGKILL to each role's Ray worker and to Valkey,
spread over the run (a fault waits for the recovery of its role's and Valkey's previous faults); then SIGINT to
the whole group.
Raw figures: [chaos.json](chaos.json).

| | |
|---|---|
| kills (done/planned) | {kills} |
| samples generated / labelled | {s['generated']} / {s['labelled']} |
| enqueued / labelled ids / queued / dead-lettered | {s['enqueued']} / {s['labelled_ids']} / {s['queued']} / {s['dead_lettered']} |
| **lost** (must be 0) | **{s['lost']}** |
| **duplicated in the replay buffer** (must be 0) | **{s['duplicated']}** ({s['replay_records']} records) |
| time to recover p50 / p95 / max | {r['p50']} s / {r['p95']} s / {r['max']} s (target p95 < {r['target_p95']:g} s; unrecovered: {r['unrecovered']}) |
| per role (s) | {by_role} |
| versions published / learner steps | {result['versions_published']} / {result['learner_steps']} |
| restarts in the summary | {', '.join(f'{k} {v}' for k, v in result['restarts'].items())}, valkey {result['broker_restarts']} |
| exit code / summary.json / tracebacks | {result['exit_code']} / {'present' if result['summary_present'] else 'MISSING'} / {result['tracebacks']} |

Time to recover: from the kill to the role's next progress read from the broker every {POLL_S:g} s (a simulator's
next labelled output, a generator's next batch, the learner's next step or ingest; after a Valkey kill, the
loop's next labelled sample). Lost: samples ever enqueued whose id is neither labelled, queued nor dead-lettered.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds from `dso run`'s start to the SIGINT")
    for role, n in DEFAULT_KILLS.items():
        parser.add_argument(f"--{role}-kills", type=int, default=n, help=f"SIGKILLs of the {role} (default {n})")
    parser.add_argument("--tail", type=float, default=45.0, help="no fault in the last TAIL seconds (the last recovery's room)")
    parser.add_argument("--config", default="tiny", help="`dso run --config` (default: the embedded tiny config)")
    parser.add_argument("--run-dir", type=Path, default=None, help="fresh run directory (default: runs/chaos/<time>)")
    parser.add_argument("--no-docs", action="store_true", help="write only <run dir>/chaos.json, not docs/")
    args = parser.parse_args()
    if args.duration <= args.tail:
        parser.error(f"--duration ({args.duration:g}) must exceed --tail ({args.tail:g})")
    kills = {role: getattr(args, f"{role}_kills") for role in DEFAULT_KILLS}
    if any(n < 0 for n in kills.values()):
        parser.error("kill counts must be >= 0")
    run_dir = (args.run_dir or ROOT / "runs" / "chaos" / datetime.now().strftime("%Y%m%d-%H%M%S")).resolve()
    if run_dir.exists() and any(run_dir.iterdir()):
        parser.error(f"{run_dir} is not empty: the bench needs a fresh run directory")
    result = run_chaos(Plan(args.duration, kills, args.tail, args.config), run_dir)
    text = json.dumps(result, indent=2)
    (run_dir / "chaos.json").write_text(text)
    if not args.no_docs:
        CHAOS_JSON.write_text(text + "\n")
        write_section(BENCHMARKS_MD, SECTION, report_markdown(result))
    s, r = result["samples"], result["recovery_s"]
    print(f"lost {s['lost']}  duplicated {s['duplicated']}  recovery p50/p95 {r['p50']}/{r['p95']} s  "
          f"exit {result['exit_code']}  summary {'present' if result['summary_present'] else 'MISSING'}")
    sys.exit(0 if s["lost"] == 0 and s["duplicated"] == 0 and result["summary_present"] else 1)


if __name__ == "__main__":
    main()
