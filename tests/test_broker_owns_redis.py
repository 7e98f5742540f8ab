"""The broker owns every Redis key and structure: nothing else in dso/ spells a key or holds the client.

The import-linter contract "Only the broker imports Redis" (pyproject.toml) keeps redis-py imports in
dso.broker; this test catches what an import check cannot: code outside the broker reaching through a
broker component to its Redis client or key space.
"""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "dso"
REACHING_IN = re.compile(r"\.client\b|\bKeySpace\b|\.keys\.(key|stream|replay|seen|prompt|prompts_|adapter_|promoted_|stats|metrics_)")


def test_no_module_outside_the_broker_touches_redis_keys_or_the_client() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.is_relative_to(PACKAGE / "broker"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if REACHING_IN.search(line):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert not offenders, "use a broker method instead:\n" + "\n".join(offenders)
