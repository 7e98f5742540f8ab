"""Supervision that heals: restarts budgeted per window with backoff, failures in the summary and the exit status,
and a terminal's Ctrl-C (SIGINT to the whole process group) ends `dso run` with its summary, not a traceback."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import pytest
import yaml

from ray.exceptions import ActorUnavailableError, RayActorError

import dso.jobs.runner as runner_module
from dso.broker.server import EmbeddedValkey
from dso.config import Settings
from dso.jobs.runner import LoopRunner, _Supervised
from dso.jobs.summary import LoopSummary
from test_loop_support import export_random_tiny_model, loop_test_settings

DSO = str(Path(sys.executable).with_name("dso"))


class FakeHandle:
    """An actor handle whose ``run.remote()`` counts the re-issues and whose ``ready.remote()`` pings answer
    from ``answers`` (an exception is raised by ``ray.get``; none left: the actor is back)."""

    def __init__(self) -> None:
        self.issued = 0
        self.pings = 0
        self.answers: list[object] = []
        self.run = types.SimpleNamespace(remote=self._remote)
        self.ready = types.SimpleNamespace(remote=self._ping)

    def _remote(self) -> str:
        self.issued += 1
        return f"ref-{self.issued}"

    def _ping(self) -> tuple[str, object]:
        self.pings += 1
        return ("ping", self.answers.pop(0) if self.answers else "simulator-0")


def _get(ref: tuple[str, object]) -> object:
    answer = ref[1]
    if isinstance(answer, BaseException):
        raise answer
    return answer


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A fake monotonic clock, and a fake ``ray`` whose pings are answered at once."""
    now = [1000.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    monkeypatch.setattr(runner_module, "time", types.SimpleNamespace(monotonic=lambda: now[0], sleep=sleep))
    monkeypatch.setattr(runner_module, "ray", types.SimpleNamespace(wait=lambda refs, **_: (refs, []), get=_get))
    return now


def come_back(runner: LoopRunner) -> None:
    """Two supervision ticks: the ping goes out, then its answer re-issues the loop."""
    runner._restart_due()
    runner._restart_due()


def supervised_runner(tmp_path: Path, **loop: float) -> tuple[LoopRunner, _Supervised]:
    settings = Settings()
    settings.loop = settings.loop.model_copy(update=loop)
    runner = LoopRunner(settings, broker=None, run_dir=tmp_path)  # type: ignore[arg-type]  # no broker needed here
    actor = _Supervised("simulator", "simulator-0", FakeHandle())
    runner.actors.append(actor)
    return runner, actor


def crash(runner: LoopRunner, actor: _Supervised) -> None:
    """What ``_reap`` does when the actor's run() ends in an error."""
    actor.ref = None
    runner._schedule_restart(actor, RuntimeError("killed"))


def test_each_crash_is_restarted_after_a_doubling_capped_backoff(tmp_path: Path, clock: list[float]) -> None:
    runner, actor = supervised_runner(
        tmp_path, restart_budget=5, restart_window_s=60.0, restart_backoff_s=0.5, restart_backoff_max_s=3.0
    )
    waits = []
    for _ in range(5):
        crash(runner, actor)
        waits.append(actor.restart_at - clock[0])
        pings = actor.handle.pings
        runner._restart_due()
        assert actor.ref is None and actor.handle.pings == pings, "not pinged before its backoff"
        clock[0] = actor.restart_at
        come_back(runner)
        assert actor.ref is not None and actor.restart_at is None
    assert waits == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert actor.handle.issued == 5 and actor.restarts == 5 and not actor.failed


def test_the_budget_is_per_window_so_occasional_kills_always_heal(tmp_path: Path, clock: list[float]) -> None:
    """The old run-wide budget (20 re-issues, never reset) left a simulator killed now and then dead for good."""
    runner, actor = supervised_runner(tmp_path, restart_budget=2, restart_window_s=10.0)
    for _ in range(30):  # a kill every 6 s: never more than 2 in any 10 s
        crash(runner, actor)
        clock[0] += 6.0
        come_back(runner)
    assert not actor.failed and actor.restarts == 30
    assert runner.health()["restarts"] == {"simulator": 30} and runner.health()["failures"] == {}


def test_a_crash_loop_past_the_budget_is_reported_failed(tmp_path: Path, clock: list[float]) -> None:
    runner, actor = supervised_runner(tmp_path, restart_budget=3, restart_window_s=60.0)
    for _ in range(4):  # crashes as soon as it is back
        crash(runner, actor)
        if actor.restart_at is not None:
            clock[0] = actor.restart_at
        come_back(runner)
    assert actor.failed and actor.restarts == 3
    health = runner.health()
    assert "crashed 4 times within 60 s" in health["failures"]["simulator-0"]
    clock[0] += 100.0
    come_back(runner)
    assert actor.handle.issued == 3, "a failed actor is not re-issued"


def test_an_actor_ray_is_still_restarting_is_pinged_again_not_counted_as_crashing(tmp_path: Path, clock: list[float]) -> None:
    """One SIGKILL is one restart: while Ray brings the process back its pings fail 'unavailable' (a loop issued
    then would fail too); the old runner counted each of those as a crash, four per kill, near the budget."""
    runner, actor = supervised_runner(tmp_path, restart_budget=2, restart_window_s=60.0, restart_backoff_s=0.5)
    actor.handle.answers = [ActorUnavailableError("restarting", None) for _ in range(6)]
    crash(runner, actor)
    clock[0] = actor.restart_at
    for _ in range(6):
        come_back(runner)
        assert actor.ref is None, "no loop while the actor is unavailable"
        clock[0] += runner_module.READY_POLL_S
    come_back(runner)
    assert actor.ref is not None and actor.handle.issued == 1 and actor.handle.pings == 7
    assert actor.restarts == 1 and len(actor.crashes) == 1 and not actor.failed


def test_an_actor_dead_for_good_counts_as_a_crash_each_time(tmp_path: Path, clock: list[float]) -> None:
    runner, actor = supervised_runner(tmp_path, restart_budget=2, restart_window_s=60.0)
    actor.handle.answers = [RayActorError() for _ in range(3)]
    crash(runner, actor)
    while not actor.failed:
        clock[0] = actor.restart_at
        come_back(runner)
    assert actor.handle.issued == 0 and "crashed 3 times" in actor.failure


def draining_runner(tmp_path: Path, backlog, **loop: float) -> LoopRunner:
    """A runner over a broker whose backlog is ``backlog(poll_number)``."""
    polls = iter(range(10**6))
    admission = types.SimpleNamespace(backlog=lambda: backlog(next(polls)))
    runner, _ = supervised_runner(tmp_path, **loop)
    runner.broker = types.SimpleNamespace(admission=admission)  # type: ignore[assignment]
    return runner


def test_the_drain_waits_while_the_backlog_shrinks_past_the_no_progress_timeout(tmp_path: Path, clock: list[float]) -> None:
    """A full backlog of a healthy loop (256 at ~12/s) takes longer than drain_timeout_s: it still drains to 0."""
    runner = draining_runner(tmp_path, lambda poll: max(0, 256 - poll), drain_timeout_s=5.0, drain_max_s=300.0)
    assert runner.drain() is True and runner.backlog_after_drain == 0
    assert clock[0] - 1000.0 > 5.0


def test_a_stuck_drain_gives_up_after_the_no_progress_timeout(tmp_path: Path, clock: list[float]) -> None:
    runner = draining_runner(tmp_path, lambda poll: max(40, 256 - poll), drain_timeout_s=5.0, drain_max_s=300.0)
    assert runner.drain() is False and runner.backlog_after_drain == 40
    capped = draining_runner(tmp_path, lambda poll: 10**6 - poll, drain_timeout_s=5.0, drain_max_s=30.0)
    started = clock[0]
    assert capped.drain() is False and clock[0] - started == pytest.approx(30.0, abs=0.5)  # always progressing


def summary(**fields) -> LoopSummary:
    base = LoopSummary.partial(Path("/tmp/run"), 1.0, None, "x")
    base.unreachable = []
    for name, value in fields.items():
        setattr(base, name, value)
    return base


def test_summary_lists_restarts_failures_and_backlog_and_says_what_went_wrong() -> None:
    clean = summary(restarts={"simulator": 4}, backlog_after_drain=0)
    assert clean.problems() == []
    bad = summary(restarts={"simulator": 6}, failures={"simulator-0": "crashed 6 times within 60 s"}, backlog_after_drain=12)
    problems = bad.problems()
    assert problems[0] == "simulator-0 failed: crashed 6 times within 60 s"
    assert "12 queued entries left unlabelled after the drain" in problems[1]
    written = json.loads(bad.to_json())
    assert written["restarts"] == {"simulator": 6} and written["failures"] and written["problems"] == problems
    gone = LoopSummary.partial(Path("/tmp/run"), 1.0, None, "broker statistics (ConnectionError: refused)")
    assert gone.problems() == ["could not read broker statistics (ConnectionError: refused)"]


def test_embedded_valkey_runs_in_its_own_process_group(tmp_path: Path) -> None:
    with EmbeddedValkey(tmp_path / "valkey") as server:
        assert os.getpgid(server.pid) != os.getpgid(0), "a terminal's Ctrl-C would reach Valkey too"


@pytest.mark.slow
def test_ctrl_c_to_the_process_group_drains_and_writes_the_summary(tmp_path: Path) -> None:
    """What a terminal does on Ctrl-C: SIGINT to every process of the foreground group, Valkey's too (before)."""
    model = export_random_tiny_model(tmp_path / "model")
    settings = loop_test_settings(
        model, {"run_dir": str(tmp_path / "run"), "max_backlog": 8}, canary={"enabled": False},
        ray_num_cpus=2, drain_timeout_s=20.0, progress_interval_s=1.0, api_enabled=False,
    )
    settings.api.metrics_port = 0
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    with tempfile.TemporaryFile("w+") as out:
        loop = subprocess.Popen(
            [DSO, "run", "--config", str(config), "--duration", "240"], stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group, as a shell job: the SIGINT below reaches it and its children only
            env={**os.environ, "COLUMNS": "200"},
        )
        try:
            deadline = time.monotonic() + 180
            while _labelled(_output(out)) == 0:
                assert loop.poll() is None, _output(out)
                assert time.monotonic() < deadline, f"the loop did not label anything in time:\n{_output(out)}"
                time.sleep(1.0)
            os.killpg(loop.pid, signal.SIGINT)
            loop.wait(timeout=150)
        finally:
            if loop.poll() is None:
                os.killpg(loop.pid, signal.SIGKILL)
                loop.wait()
        text = _output(out)
    assert "Traceback" not in text, text
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written["totals"]["labelled"] > 0 and written["unreachable"] == [], text
    assert loop.returncode == (1 if written["problems"] else 0), text


def _output(handle) -> str:
    handle.seek(0)
    return handle.read()


def _labelled(text: str) -> int:
    """Samples labelled so far, from the newest progress line (0 before the first)."""
    counts = re.findall(r"labelled (\d+)", text)
    return int(counts[-1]) if counts else 0
