"""Load test of the broker alone: fake generators, simulators and a learner on one real Valkey, over loopback.

    python bench/broker.py                      # ~60 s + a few s of set-up, writes docs/broker_bench.json
    python bench/broker.py --duration 3 --generators 1 --simulators 1 --out /tmp/b.json

Nothing is generated or simulated: each fake role does exactly the broker calls its real role
makes (dso/actors/generator_worker.py, simulator_worker.py, learner.py), on realistic records,
at ``--multiple`` (default 10x) the per-component rates measured in docs/benchmarks.md:

- a generator: admission check, then one transaction of ``--batch`` SampleRecords (XADD each) and
  its count, paced to ``--gen-rate x --multiple`` samples/s;
- a simulator: reclaim + XREADGROUP (``take``), decode, a fake verdict after
  ``1 / (--sim-rate x --multiple)`` s, the labelled record XADDed on, the sample XACKed (+ XDEL);
- the learner: reclaim + XREADGROUP of the labelled stream, each entry into the replay buffer
  (the insert-and-ack script).

Reported: achieved samples/s per stage, Redis commands/s and per sample, p50/p99 latency of each
broker call, network bytes per sample, and the memory one sample costs (queued in the stream, and
kept in the replay buffer with its dedup key), measured on an isolated key space after the load.
Records default to TRELLIS-L size (latent [8, 16, 16, 16] float16, occupancy 64^3 bits).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dso.broker.broker import Broker
from dso.broker.records import LabelledRecord, SampleRecord
from dso.broker.server import EmbeddedValkey
from dso.config import BrokerSettings, LoopSettings
from dso.sim.verdict import SimStatus, Verdict

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "broker_bench.json"

# Per-component rates measured on this repository's 2-core machine (docs/benchmarks.md):
GENERATOR_SAMPLES_PER_S = 14.76  # "Generator": tiny, CPU, fp32, batch 8
SIMULATOR_SAMPLES_PER_S = 169.0  # "Stability oracle": default configuration, shapes/s on 1 core
# Record sizes: TRELLIS stage 1 (latent 8 x 16^3, occupancy 64^3) and the embedded tiny model (8 x 8^3, 32^3)
SHAPES = {"trellis": ((8, 16, 16, 16), 64), "tiny": ((8, 8, 8, 8), 32)}
RECORD_POOL = 8  # distinct random arrays reused (with fresh sample ids): encoding cost stays real, RNG cost out
IDLE_S = 0.005  # pause of a fake role that found nothing to do (the real roles use loop.idle_sleep_s)
READ_BLOCK_MS = 100  # blocking read of an idle consumer (the standalone worker caps it at 250 ms)
JOIN_TIMEOUT_S = 10.0
SETTLE_S, SETTLE_POLL_S = 3.0, 0.1  # waiting for the server's background frees before reading used_memory


@dataclass
class Counters:
    """Per-thread tallies, merged at the end (no shared state on the hot path)."""

    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def timed(self, op: str, started: float) -> None:
        self.latencies[op].append(time.perf_counter() - started)


def make_pool(kind: str, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    latent_shape, res = SHAPES[kind]
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(latent_shape).astype(np.float16), rng.random((res, res, res)) > 0.5) for _ in range(RECORD_POOL)]


def fake_verdict(rng: np.random.Generator, sim_s: float) -> Verdict:
    stable = bool(rng.random() < 0.85)  # TRELLIS' stable share (reference facts, Table 1)
    return Verdict(status=SimStatus.ok, stable=stable, tilt_deg=2.0 if stable else 80.0, rotation_deg=3.0, elapsed_s=sim_s)


def generator(settings: BrokerSettings, args: argparse.Namespace, index: int, stop: threading.Event, out: Counters) -> None:
    pool = make_pool(args.records, index)
    period = args.batch / (args.gen_rate * args.multiple)
    with Broker.open(settings) as broker:
        next_at = time.perf_counter()
        n = 0
        while not stop.is_set():
            started = time.perf_counter()
            admitted = broker.admission.admit(args.batch)
            out.timed("admit", started)
            if not admitted:
                out.counts["throttled"] += 1
                time.sleep(IDLE_S)
                continue
            payloads = []
            for _ in range(args.batch):
                latent, occupancy = pool[n % RECORD_POOL]
                record = SampleRecord(prompt_id=f"p{n % 32}", view=0, adapter_version=0, seed=n, latent=latent,
                                      occupancy=occupancy, generation_seconds=1.0 / args.gen_rate)
                payloads.append((record.sample_id, record.to_bytes()))
                n += 1
            started = time.perf_counter()
            batch = broker.transaction()
            for sample_id, payload in payloads:
                broker.samples.put(sample_id, payload, pipe=batch)
            broker.stats.record_generated(0, len(payloads), period, pipe=batch)
            batch.execute()
            out.timed("enqueue batch", started)
            out.counts["enqueued"] += len(payloads)
            out.counts["payload bytes"] += sum(len(p) for _, p in payloads)
            next_at += period
            delay = next_at - time.perf_counter()
            if delay > 0:
                stop.wait(delay)
            else:
                next_at = time.perf_counter()  # behind: no catch-up burst


def simulator(settings: BrokerSettings, args: argparse.Namespace, index: int, stop: threading.Event, out: Counters) -> None:
    name = f"bench-sim-{index}"
    sim_s = 1.0 / (args.sim_rate * args.multiple)
    rng = np.random.default_rng(index)
    batch = LoopSettings().simulator_batch
    with Broker.open(settings) as broker:
        while not stop.is_set():
            started = time.perf_counter()
            deliveries = broker.samples.reclaim(name, count=batch) or broker.samples.read(name, count=batch, block_ms=READ_BLOCK_MS)
            out.timed("claim", started)
            if not deliveries:
                continue
            for delivery in deliveries:
                sample = SampleRecord.from_bytes(delivery.payload)
                time.sleep(sim_s)
                labelled = LabelledRecord.from_verdict(sample, fake_verdict(rng, sim_s))
                started = time.perf_counter()
                broker.labelled.put(sample.sample_id, labelled.to_bytes())
                out.timed("hand on", started)
                started = time.perf_counter()
                broker.samples.ack([delivery.entry_id])
                out.timed("ack", started)
                out.counts["labelled"] += 1


def learner(settings: BrokerSettings, args: argparse.Namespace, stop: threading.Event, out: Counters) -> None:
    name = "bench-learner"
    count = LoopSettings().ingest_batch
    with Broker.open(settings) as broker:
        while not stop.is_set():
            started = time.perf_counter()
            deliveries = broker.labelled.reclaim(name, count=count)
            deliveries += broker.labelled.read(name, count=count, block_ms=0)
            out.timed("learner claim", started)
            if not deliveries:
                time.sleep(IDLE_S)
                continue
            for delivery in deliveries:
                started = time.perf_counter()
                broker.replay.ingest(delivery, broker.labelled)
                out.timed("ingest", started)
                out.counts["ingested"] += 1


def settled_used_memory(broker: Broker) -> float:
    """used_memory once the server's lazy free (big keys are freed in the background) has caught up."""
    last = broker.server_counters()["used_memory"]
    deadline = time.perf_counter() + SETTLE_S
    while time.perf_counter() < deadline:
        time.sleep(SETTLE_POLL_S)
        now = broker.server_counters()["used_memory"]
        if now == last:
            break
        last = now
    return last


def footprint(settings: BrokerSettings, args: argparse.Namespace) -> dict[str, float]:
    """Memory of one sample on an isolated key space: queued (stream entry), then kept (replay record + dedup key)."""
    n = args.footprint_samples
    isolated = settings.model_copy(update={"key_prefix": f"benchfp{uuid.uuid4().hex[:8]}", "replay_capacity": 2 * n + 2})
    pool = make_pool(args.records, 99)
    rng = np.random.default_rng(0)
    with Broker.open(isolated) as broker:
        base_stream, base_used = broker.samples.memory_bytes(), broker.server_counters()["used_memory"]
        size = 0
        for i in range(n):
            latent, occupancy = pool[i % RECORD_POOL]
            record = SampleRecord(prompt_id="p0", view=0, adapter_version=0, seed=i, latent=latent, occupancy=occupancy)
            payload = record.to_bytes()
            size += len(payload)
            broker.samples.put(record.sample_id, payload)
        queued_stream = broker.samples.memory_bytes() - base_stream
        queued_used = broker.server_counters()["used_memory"] - base_used
        done = 0
        while done < n:
            for delivery in broker.samples.read("fp-sim", count=n, block_ms=0):
                labelled = LabelledRecord.from_verdict(SampleRecord.from_bytes(delivery.payload), fake_verdict(rng, 0.0))
                broker.labelled.put(labelled.sample_id, labelled.to_bytes())
                broker.samples.ack([delivery.entry_id])
                done += 1
        for delivery in broker.labelled.read("fp-learner", count=n, block_ms=0):
            broker.replay.ingest(delivery, broker.labelled)
        # both streams are empty again (acked entries are deleted): what is left is the replay record and its dedup key
        kept_used = broker.server_counters()["used_memory"] - base_used
        broker.replay.clear()  # the dedup keys stay (seen_ttl_s): what is left is theirs
        seen_used = settled_used_memory(broker) - base_used
    return {
        "samples": n,
        "payload_bytes_per_sample": size / n,
        "stream_bytes_per_queued_sample": queued_stream / n,
        "used_memory_per_queued_sample": queued_used / n,
        "used_memory_per_replay_record": kept_used / n,
        "used_memory_per_dedup_key": seen_used / n,
    }


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"calls": 0, "p50_ms": float("nan"), "p99_ms": float("nan")}
    arr = np.asarray(values) * 1000.0
    return {"calls": len(values), "p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99))}


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dso-broker-bench-") as tmp:
        server = None
        url = args.redis
        if url is None:
            server = EmbeddedValkey(Path(tmp) / "valkey").start()
            url = server.url
        try:
            settings = BrokerSettings(redis_url=url, run_dir=Path(tmp) / "run", key_prefix=f"bench{uuid.uuid4().hex[:8]}",
                                      replay_capacity=args.replay_capacity)
            return measure(settings, args)
        finally:
            if server is not None:
                server.stop()


def measure(settings: BrokerSettings, args: argparse.Namespace) -> dict[str, Any]:
    stop = threading.Event()
    roles: list[tuple[str, Counters, threading.Thread]] = []
    for i in range(args.generators):
        c = Counters()
        roles.append(("generator", c, threading.Thread(target=generator, args=(settings, args, i, stop, c), daemon=True)))
    for i in range(args.simulators):
        c = Counters()
        roles.append(("simulator", c, threading.Thread(target=simulator, args=(settings, args, i, stop, c), daemon=True)))
    c = Counters()
    roles.append(("learner", c, threading.Thread(target=learner, args=(settings, args, stop, c), daemon=True)))
    with Broker.open(settings) as probe:
        before = probe.server_counters()
        started = time.perf_counter()
        for _, _, thread in roles:
            thread.start()
        with tqdm(total=round(args.duration), desc="broker load", unit="s", disable=args.quiet) as bar:
            while (elapsed := time.perf_counter() - started) < args.duration:
                time.sleep(min(0.5, args.duration - elapsed))
                bar.n = min(round(time.perf_counter() - started), bar.total)
                done = {k: sum(c.counts[k] for _, c, _ in roles) for k in ("enqueued", "labelled", "ingested")}
                bar.set_postfix(done, refresh=False)
                bar.refresh()
        stop.set()
        for _, _, thread in roles:
            thread.join(JOIN_TIMEOUT_S)
        seconds = time.perf_counter() - started
        after = probe.server_counters()
        depth = probe.samples.depth().as_dict()
    counts: dict[str, int] = defaultdict(int)
    latencies: dict[str, list[float]] = defaultdict(list)
    for _, c, _ in roles:
        for k, v in c.counts.items():
            counts[k] += v
        for k, v in c.latencies.items():
            latencies[k].extend(v)
    enqueued = max(counts["enqueued"], 1)
    delta = {k: after[k] - before[k] for k in before}
    redis_cpu_s = delta["used_cpu_sys"] + delta["used_cpu_user"]
    result = {
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "quiet")},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "offered_samples_per_s": args.generators * args.gen_rate * args.multiple,
        "simulator_capacity_samples_per_s": args.simulators * args.sim_rate * args.multiple,
        "seconds": seconds,
        "throughput_per_s": {
            "enqueued": counts["enqueued"] / seconds,
            "labelled": counts["labelled"] / seconds,
            "ingested": counts["ingested"] / seconds,
            "redis_commands": delta["total_commands_processed"] / seconds,
            "redis_net_in_mb": delta["total_net_input_bytes"] / seconds / 1e6,
            "redis_net_out_mb": delta["total_net_output_bytes"] / seconds / 1e6,
            "redis_cpu_cores": redis_cpu_s / seconds,  # the server's CPU seconds per second (main + I/O threads)
        },
        "per_sample": {
            "payload_bytes": counts["payload bytes"] / enqueued,
            "redis_commands": delta["total_commands_processed"] / enqueued,
            "redis_net_in_bytes": delta["total_net_input_bytes"] / enqueued,
            "redis_net_out_bytes": delta["total_net_output_bytes"] / enqueued,
            "redis_cpu_ms": 1000.0 * redis_cpu_s / enqueued,
        },
        "latency": {op: percentiles(v) for op, v in sorted(latencies.items())},
        "generator_batches_throttled": counts["throttled"],
        "samples_queue_at_stop": depth,
        "totals": dict(counts),
    }
    result["memory"] = footprint(settings, args)
    return result


def table(result: dict[str, Any]) -> str:
    t, p, m = result["throughput_per_s"], result["per_sample"], result["memory"]
    lines = [
        f"offered {result['offered_samples_per_s']:.0f} samples/s for {result['seconds']:.1f} s; "
        f"achieved: enqueued {t['enqueued']:.1f}/s, labelled {t['labelled']:.1f}/s, ingested {t['ingested']:.1f}/s",
        f"redis: {t['redis_commands']:.0f} commands/s ({p['redis_commands']:.1f} per sample), "
        f"in {t['redis_net_in_mb']:.1f} MB/s ({p['redis_net_in_bytes'] / 1e3:.1f} kB per sample), "
        f"out {t['redis_net_out_mb']:.1f} MB/s ({p['redis_net_out_bytes'] / 1e3:.1f} kB per sample), "
        f"CPU {t['redis_cpu_cores']:.2f} cores ({p['redis_cpu_ms']:.2f} ms per sample)",
        f"memory per sample: payload {m['payload_bytes_per_sample'] / 1e3:.1f} kB, queued {m['stream_bytes_per_queued_sample'] / 1e3:.1f} kB "
        f"(stream), {m['used_memory_per_queued_sample'] / 1e3:.1f} kB (used_memory); in the replay buffer {m['used_memory_per_replay_record'] / 1e3:.1f} kB, "
        f"its dedup key alone {m['used_memory_per_dedup_key']:.0f} B",
        "",
        "| call | calls | p50 ms | p99 ms |",
        "|---|---:|---:|---:|",
    ]
    for op, row in result["latency"].items():
        lines.append(f"| {op} | {row['calls']} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    loop = LoopSettings()
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--generators", type=int, default=4, help="fake generator threads")
    parser.add_argument("--simulators", type=int, default=8, help="fake simulator threads")
    parser.add_argument("--multiple", type=float, default=10.0, help="each fake role runs this many times its measured rate")
    parser.add_argument("--gen-rate", type=float, default=GENERATOR_SAMPLES_PER_S, help="measured samples/s of one generator")
    parser.add_argument("--sim-rate", type=float, default=SIMULATOR_SAMPLES_PER_S, help="measured samples/s of one simulator core")
    parser.add_argument("--batch", type=int, default=loop.samples_per_prompt * loop.prompts_per_batch, help="samples per generator batch")
    parser.add_argument("--records", choices=sorted(SHAPES), default="trellis", help="record size")
    parser.add_argument("--replay-capacity", type=int, default=512, help="replay buffer records kept during the load")
    parser.add_argument("--footprint-samples", type=int, default=200, help="samples of the isolated memory measurement")
    parser.add_argument("--redis", default=None, help="a Redis URL instead of an embedded Valkey")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
