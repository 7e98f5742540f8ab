"""bench/broker.py runs end to end on a real embedded Valkey for a few seconds and writes its figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_broker_bench_runs_briefly_and_reports_positive_rates(tmp_path: Path) -> None:
    out = tmp_path / "broker_bench.json"
    cmd = [sys.executable, str(ROOT / "bench" / "broker.py"), "--duration", "3", "--generators", "1", "--simulators", "1",
           "--records", "tiny", "--footprint-samples", "20", "--out", str(out), "--quiet"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    rates = result["throughput_per_s"]
    assert rates["enqueued"] > 0 and rates["labelled"] > 0 and rates["redis_commands"] > 0
    for op in ("enqueue batch", "claim", "ack"):
        assert result["latency"][op]["calls"] > 0 and result["latency"][op]["p99_ms"] >= result["latency"][op]["p50_ms"] > 0
    memory = result["memory"]
    assert memory["stream_bytes_per_queued_sample"] > 0 and memory["payload_bytes_per_sample"] > 0
    assert "| claim |" in done.stdout
