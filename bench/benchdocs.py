"""Shared by the benches: replace (or append) one ``## Section`` of docs/benchmarks.md, leaving the others alone."""

from __future__ import annotations

from pathlib import Path

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def write_section(path: Path, section: str, body: str) -> None:
    """``body`` starts with the ``section`` heading line itself."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.strip() == section), None)
    if start is None:
        text = text.rstrip("\n") + "\n\n" + body.rstrip("\n") + "\n"
    else:
        end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
        rest = "".join(lines[end:])
        text = "".join(lines[:start]) + body.rstrip("\n") + "\n" + ("\n" + rest if rest else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
