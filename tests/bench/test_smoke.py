"""The benchmark suite's smoke run goes through every code path and writes every figure.

No timing thresholds: benchmarks print figures, they never fail CI on speed.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e

# Figures where the SDK-style baseline is measured too (memory: one baseline variant only).
COMPARED = (
    "thinking_ms_p50",
    "first_text_ms_p50",
    "card_calls_per_reply",
    "throttled_403_429",
    "replies_per_s",
)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.timeout(900)
def test_smoke_run_writes_every_figure(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "bench/run.py", "--smoke", "--results-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    latest = json.loads((tmp_path / "latest-smoke.json").read_text())
    assert len(list(tmp_path.glob("*Z-smoke.json"))) == 1
    assert not (tmp_path / "latest.json").exists(), "a smoke run must not replace the committed results"

    assert latest["mode"] == "smoke"
    assert {"cores", "cpu_model", "python"} <= latest["machine"].keys()
    assert latest["parameters"]["rates"]
    figures = {f["key"]: f for f in latest["figures"]}
    rate = latest["parameters"]["rates"][0]
    expected = [
        *(
            f"{name}_{share}"
            for name in ("thinking_ms", "first_text_ms", "final_ms")
            for share in ("p50", "p99")
        ),
        "card_calls_per_reply",
        "throttled_403_429",
        *(
            f"{name}_at_{rate:g}"
            for name in ("complete", "lost", "doubled", "first_text_p99_ms", "throttled")
        ),
        "replies_per_s",
        "cpu_bot_cores",
        *(f"cpu_{name}_cores" for name in ("connector", "router", "agent-runner", "admin-api")),
        *(f"cpu_{name}_cores" for name in ("imsim", "model", "nats", "machine")),
        "memory_idle_mb",
        "memory_busy_mb",
    ]
    assert sorted(figures) == sorted(expected)
    for key, figure in figures.items():
        assert _number(figure["imgate"]), f"{key}: {figure}"
    for key in COMPARED:
        assert _number(figures[key]["baseline"]) and _number(figures[key]["baseline_interval"]), figures[key]
    assert _number(figures["memory_idle_mb"]["baseline"])
    assert "figure" in done.stdout and "imgate" in done.stdout and "baseline" in done.stdout
