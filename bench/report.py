"""What every benchmark report shares: the machine it ran on, and its section of
docs/benchmarks.md replaced in place (file I/O only)."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path


def machine() -> dict[str, object]:
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "processor": platform.processor() or platform.machine(),
    }


def machine_line() -> str:
    m = machine()
    return f"{m['platform']}, {m['cpus']} CPUs ({m['processor']}), Python {m['python']}"


def _level(line: str) -> int:
    return len(line) - len(line.lstrip("#")) if line.startswith("#") else 0


def _span(lines: list[str], heading: str, lo: int, hi: int) -> tuple[int, int] | None:
    """Where the section headed `heading` lies in lines[lo:hi] (to the next heading of its
    level or above), or None."""
    start = next((i for i in range(lo, hi) if lines[i].strip() == heading), None)
    if start is None:
        return None
    level = _level(heading)
    end = next((i for i in range(start + 1, hi) if 0 < _level(lines[i]) <= level), hi)
    return start, end


def _strip_tail(lines: list[str]) -> list[str]:
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def update_section(path: Path, heading: str, body: str, *, parent: str | None = None,
                   parent_intro: str = "") -> None:
    """Put `heading` + `body` in the markdown file `path`, replacing that section if there
    (a section runs to the next heading of its level or above) and appending it if not.
    With `parent`, the section lives inside the parent's section, which is created with
    `parent_intro` when missing. Everything else in the file is left as it is."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    lines = _strip_tail(text.split("\n"))
    lo, hi = 0, len(lines)
    if parent is not None:
        found = _span(lines, parent, 0, len(lines))
        if found is None:
            lines += ["", parent, "", *parent_intro.split("\n")]
            found = (len(lines) - 3 - parent_intro.count("\n"), len(lines))
        lo, hi = found
    new = [heading, "", *_strip_tail(body.strip("\n").split("\n")), ""]
    found = _span(lines, heading, lo, hi)
    if found is None:
        lines = _strip_tail(lines[:hi]) + ["", *new] + lines[hi:]
    else:
        lines = lines[: found[0]] + new + lines[found[1]:]
    path.write_text("\n".join(_strip_tail(lines)) + "\n", encoding="utf-8")
