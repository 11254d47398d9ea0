"""What every benchmark script shares: the machine it ran on, and its section of BENCHMARKS.md."""

from __future__ import annotations

import platform
import sys
from pathlib import Path


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or platform.machine()


def command_line(script: str) -> str:
    """This run's command as a user types it, without `--write FILE`."""
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip or arg == "--write":
            skip = arg == "--write"
            continue
        args.append(arg)
    return " ".join([f"python bench/{script}", *args])


def write_section(path: Path, name: str, heading: str, body: str, command: str) -> None:
    """Replace this benchmark's section of the markdown file (between its markers), or append one."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    section = f"{start}\nCommand: `{command}`\n\n{body}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + f"\n\n## {heading}\n\n{section}\n"
    path.write_text(text)
