"""bench/gpu.sh: valid bash, its steps wired to flags the benches really have, a failed step recorded, exit 1."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")

# Stands in for Python: logs each call; the learner "fails" (rc 3), everything else succeeds.
FAKE_PYTHON = """#!/usr/bin/env bash
printf '%s\\n' "$*" >> "$FAKE_LOG"
case "$*" in
  -\\ *) cat > /dev/null ;;
  *bench/learner.py*) exit 3 ;;
esac
exit 0
"""


def test_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_cpu_check_runs_each_step_and_records_a_failure(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    out, log = tmp_path / "out", tmp_path / "calls.log"
    env = {**os.environ, "DSO_GPU_PYTHON": str(fake), "FAKE_LOG": str(log), "OUT": str(out), "TMPDIR": str(tmp_path)}
    res = subprocess.run(["bash", str(SCRIPT), "--cpu-check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1, res.stdout + res.stderr
    summary = json.loads((out / "gpu_bench.json").read_text())
    assert summary["mode"] == "cpu-check" and summary["failed"] is True
    assert summary["steps"]["generator"]["status"] == "ok"
    assert summary["steps"]["learner"]["status"] == "failed (rc 3)"
    assert summary["steps"]["loop"]["status"] == "ok"  # the step after a failed one still ran
    assert "summary (CPU check, tiny size)" in (out / "gpu_bench.log").read_text()
    calls = log.read_text().splitlines()
    gen = next(c for c in calls if "bench/generator.py" in c)
    learn = next(c for c in calls if "bench/learner.py" in c)
    loop = next(c for c in calls if "-m dso.cli run" in c)
    assert "--batches 1 8" in gen and "--dtypes fp32 bf16" in gen and "--source random" in gen
    assert "--objectives dro dpo" in learn
    # every flag the script passes exists in the real command's --help
    for call, cmd in (
        (gen, [sys.executable, "bench/generator.py", "--help"]),
        (learn, [sys.executable, "bench/learner.py", "--help"]),
        (loop, [sys.executable, "-m", "dso.cli", "run", "--help"]),
    ):
        helptext = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True, timeout=60).stdout
        for flag in re.findall(r"(?<!\S)--[a-z][a-z-]*", call):
            assert flag in helptext, f"{flag} not in {' '.join(cmd[1:])}"


def test_loop_settings_it_overrides_exist():
    from dso.config import Settings

    names = set(re.findall(r"DSO__([A-Z_]+?)__([A-Z_]+)=", SCRIPT.read_text()))
    assert len(names) >= 10
    for section, field in names:
        model = Settings.model_fields[section.lower()].annotation
        assert field.lower() in model.model_fields, f"DSO__{section}__{field}"
