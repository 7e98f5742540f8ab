"""The chaos bench, short: `dso run` with its simulator killed 3 times, generator, learner and Valkey once each,
then SIGINT to its process group. Nothing is lost or stored twice, and the run says how it ended.

The documented run is ``python bench/chaos.py --duration 600`` (docs/benchmarks.md, "Chaos").
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import chaos  # noqa: E402

pytestmark = pytest.mark.slow

DURATION_S = 130.0  # from `dso run`'s start to the SIGINT; 35-45 s of it is start-up on 2 busy cores
TAIL_S = 15.0  # the last fault's room to recover before the SIGINT
KILLS = {"simulator": 3, "generator": 1, "learner": 1, "valkey": 1}


def test_short_chaos_run_loses_nothing_and_ends_honestly(tmp_path: Path) -> None:
    result = chaos.run_chaos(chaos.Plan(DURATION_S, KILLS, TAIL_S), tmp_path / "run")
    samples, text = result["samples"], chaos.report_markdown(result)
    assert result["summary_present"], text
    assert samples["lost"] == 0 and samples["duplicated"] == 0, text
    assert samples["labelled_ids"] > 0 and samples["generated"] == samples["enqueued"], text
    assert result["tracebacks"] == 0, text
    assert sum(result["kills_done"].values()) >= len(KILLS), f"too few faults injected:\n{text}"
    assert result["broker_restarts"] == result["kills_done"]["valkey"], text
    # 0 after a clean ending; 1 only when the summary says why (a role failed, work left after the drain)
    assert result["exit_code"] == (1 if result["problems"] else 0), text
