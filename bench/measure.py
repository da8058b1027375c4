"""What every benchmark measures with: percentiles, and CPU and memory of process trees from /proc."""

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], share: float) -> float:
    """Nearest rank: the smallest value with at least `share` of the values at or below it."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (which may hold spaces and parentheses)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """`root` and every live descendant of it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes have used so far (children already reaped included)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            # utime, stime, cutime, cstime are fields 14-17 of stat; `fields` starts at field 3.
            total += sum(int(v) for v in fields[11:15])
    return total / CLOCK_TICKS


def rss_mb(pids: list[int]) -> float:
    total_kb = 0
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            continue
        total_kb += next((int(line.split()[1]) for line in lines if line.startswith("VmRSS:")), 0)
    return total_kb / 1024


MACHINE = "machine"  # every process on the machine, ours and anyone else's


def machine_cpu_seconds() -> float:
    """CPU time the whole machine spent busy (all cores, everything but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    # guest time is already counted in user time
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


@dataclass
class CpuMeter:
    """CPU used by named process trees between `start()` and `stop()`, in cores (1.0 = one core),
    and by the whole machine under the name `machine`."""

    roots: dict[str, list[int]]
    _start: dict[str, float] | None = None
    _started_at: float = 0.0

    def _sample(self) -> dict[str, float]:
        sample = {
            name: cpu_seconds([p for r in roots for p in process_tree(r)])
            for name, roots in self.roots.items()
        }
        sample[MACHINE] = machine_cpu_seconds()
        return sample

    def start(self) -> None:
        self._started_at = time.monotonic()
        self._start = self._sample()

    def stop(self) -> dict[str, float]:
        assert self._start is not None, "start() first"
        elapsed = max(time.monotonic() - self._started_at, 1e-9)
        end = self._sample()
        return {name: (end[name] - self._start[name]) / elapsed for name in (*self.roots, MACHINE)}


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: a figure taken on a busy machine says so."""
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


def machine() -> dict[str, object]:
    """Cores, CPU model, memory and the interpreter: what a figure needs beside it to mean something."""
    import platform

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    mhz = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("cpu MHz")]
    meminfo = Path("/proc/meminfo").read_text().splitlines() if Path("/proc/meminfo").exists() else []
    mem_kb = next((int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:")), 0)
    return {
        "cores": os.cpu_count(),
        "cpu_model": models[0] if models else platform.processor(),
        "cpu_mhz": float(mhz[0]) if mhz else None,
        "memory_mb": mem_kb // 1024,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
