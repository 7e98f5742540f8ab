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


def write_subsection(path: Path, section: str, subsection: str, body: str) -> None:
    """Replace (or append) one ``### Subsection`` inside ``## Section``; ``body`` starts with its heading line."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.strip() == section), None)
    if start is None:
        write_section(path, section, section + "\n\n" + body)
        return
    end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
    sub = next((j for j in range(start + 1, end) if lines[j].strip() == subsection), None)
    if sub is None:
        sub_end = end
        sub = end
        head = "".join(lines[:end]).rstrip("\n") + "\n\n"
    else:
        sub_end = next((j for j in range(sub + 1, end) if lines[j].startswith("### ")), end)
        head = "".join(lines[:sub])
    rest = "".join(lines[sub_end:])
    path.write_text(head + body.rstrip("\n") + "\n" + ("\n" + rest if rest else ""))


def keep_subsection(path: Path, section: str, subsection: str) -> str:
    """The current text of ``### Subsection`` inside ``## Section`` (heading included), or "" (to carry it over a rewrite)."""
    if not path.exists():
        return ""
    lines = path.read_text().splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.strip() == section), None)
    if start is None:
        return ""
    end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
    sub = next((j for j in range(start + 1, end) if lines[j].strip() == subsection), None)
    if sub is None:
        return ""
    sub_end = next((j for j in range(sub + 1, end) if lines[j].startswith("### ")), end)
    return "".join(lines[sub:sub_end]).rstrip("\n") + "\n"
