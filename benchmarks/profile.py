"""Profile a command with py-spy and summarise where its CPU went.

``python -m benchmarks.profile OUT.txt -- COMMAND...`` records with ``py-spy record --format
raw`` (collapsed stacks; idle threads excluded, so every sample is a busy one), then prints the
functions with the most *self* time, the most *inclusive* time, and a split by library.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from .install import PEERS_VENV

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")


def py_spy() -> str | None:
    local = PEERS_VENV / "bin" / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def record(raw: Path, argv: list[str], rate: int = 250) -> int:
    spy = py_spy()
    if spy is None:
        raise RuntimeError("py-spy is not installed (python -m benchmarks.install)")
    cmd = [spy, "record", "--format", "raw", "--rate", str(rate), "-o", str(raw), "--", *argv]
    return subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode


def _frame(text: str) -> tuple[str, str]:
    match = _FRAME.match(text.strip())
    if not match:
        return text.strip(), ""
    return match["func"], match["file"]


def _library(path: str) -> str:
    """The top-level package of a frame's file (py-spy prints paths relative to sys.path)."""
    if not path:
        return "native/unknown"
    return path.split("/")[0] if "/" in path else Path(path).stem


def summarize(raw: Path, top: int = 15) -> dict[str, object]:
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    libraries: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame(f) for f in stack.split(";")]
        frames = [f for f in frames if f[1] or f[0]]
        if not frames:
            continue
        func, path = frames[-1]
        in_thread = frames[0][0] == "Thread._bootstrap"
        threads["worker threads (to_thread, checkpoint)" if in_thread else "main"] += count
        self_time[f"{func} ({Path(path).name})"] += count
        libraries[_library(path)] += count
        for name in {f"{func} ({Path(path).name})" for func, path in frames}:
            inclusive[name] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(top)]

    return {
        "samples": total,
        "self": share(self_time),
        "inclusive": share(inclusive),
        "threads": share(threads),
        "libraries": share(libraries),
    }


def render(summary: dict[str, object]) -> str:
    lines = [f"{summary['samples']} busy samples"]
    for title in ("threads", "libraries", "self", "inclusive"):
        lines.append(f"-- {title} (% of busy samples)")
        rows = summary[title]
        assert isinstance(rows, list)
        lines.extend(f"  {pct:5.1f}%  {name}" for name, pct in rows)
    return "\n".join(lines)


def main() -> int:
    out = Path(sys.argv[1])
    argv = sys.argv[sys.argv.index("--") + 1 :]
    raw = out.with_suffix(".raw")
    record(raw, argv)
    text = render(summarize(raw, top=25))
    out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
