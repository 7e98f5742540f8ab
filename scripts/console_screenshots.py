"""Write the console screenshots in docs/ (console.png at 1280 px, console-mobile.png at 390 px).

    python scripts/console_screenshots.py [extra pytest arguments]

Runs the console's end-to-end test (tests/test_console_e2e.py: a running loop on the tiny
model, headless Chromium) with DSO_WRITE_SCREENSHOTS=1, the only way it writes to docs/;
a plain test run keeps its screenshots in a temp dir. Needs chromium and chromedriver
(scripts/ci-system-deps.sh). Exits with the test's status.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST = "tests/test_console_e2e.py::test_console_shows_the_loop_learning"
NAMES = ("console.png", "console-mobile.png")


def main(argv: list[str]) -> int:
    shots = [ROOT / "docs" / name for name in NAMES]
    before = {path: path.stat().st_mtime_ns if path.exists() else None for path in shots}
    env = {**os.environ, "DSO_WRITE_SCREENSHOTS": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-rs", TEST, *argv]
    status = subprocess.call(command, cwd=ROOT, env=env)
    if status != 0:
        return status
    stale = [path for path in shots if not path.exists() or path.stat().st_mtime_ns == before[path]]
    if stale:  # e.g. the test was skipped (no chromium)
        print(f"not written: {', '.join(str(p) for p in stale)} (see the test's skip reason above)", file=sys.stderr)
        return 1
    for path in shots:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
