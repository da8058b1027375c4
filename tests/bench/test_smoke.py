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

# Figures where both SDK-style baselines are measured too, and those where the SDK-pattern bots
# of the cost run are (the 0.8 s variant only; memory: the every-chunk process only).
COMPARED = (
    "thinking_ms_p50",
    "first_text_ms_p50",
    "first_text_ms_p50_first_contact",
    "card_calls_per_reply",
    "throttled_403_429",
    "card_budget_used_at_2",
)
# Feishu's rows, each beside imgate's own DingTalk figure at the same rate (no Feishu SDK bot).
FEISHU = (
    "thinking_ms_p50",
    "first_text_ms_p50",
    "first_text_ms_p99",
    "final_ms_p50",
    "final_ms_p99",
    "complete",
    "lost",
    "doubled",
    "card_calls_per_reply",
    "refused",
)
COMPARED_COST = ("answered", "answers_per_s", "final_p50", "final_p99", "cpu_ms_per_answer", "cpu_machine")


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
    feishu_rate = latest["parameters"]["feishu_rates"][0]
    assert feishu_rate == rate, "the smoke compares Feishu with DingTalk at the same rate"
    cost_rate = latest["parameters"]["cost_rates"][0]
    expected = [
        *(
            f"{name}_{share}"
            for name in ("thinking_ms", "first_text_ms", "final_ms")
            for share in ("p50", "p99")
        ),
        "first_text_ms_p50_first_contact",
        "card_calls_per_reply",
        "throttled_403_429",
        *(
            f"{name}_at_{rate:g}"
            for name in (
                "complete",
                "lost",
                "doubled",
                "first_text_p99_ms",
                "final_p99_ms",
                "throttled",
                "card_budget_used",
            )
        ),
        *(f"feishu_{name}_at_{feishu_rate:g}" for name in FEISHU),
        *(f"cost_{name}_at_{cost_rate:g}" for name in COMPARED_COST),
        *(
            f"cost_cpu_ms_{name}_at_{cost_rate:g}"
            for name in ("connector", "router", "agent-runner", "admin-api")
        ),
        "cost_answers_per_s_two_replicas",
        f"sqlite_answers_per_s_at_{cost_rate:g}",
        f"sqlite_final_p50_at_{cost_rate:g}",
        "sqlite_locked",
        "memory_idle_mb",
        "memory_busy_mb",
    ]
    assert sorted(figures) == sorted(expected)
    for key, figure in figures.items():
        assert _number(figure["imgate"]), f"{key}: {figure}"
    for key in COMPARED:
        assert _number(figures[key]["baseline"]) and _number(figures[key]["baseline_interval"]), figures[key]
    for name in FEISHU:
        assert _number(figures[f"feishu_{name}_at_{feishu_rate:g}"]["baseline"]), name
    feishu = latest["raw"]["feishu"][0]
    assert feishu["complete"] > 0 and feishu["card_calls"] > 0, feishu
    for name in COMPARED_COST:
        assert _number(figures[f"cost_{name}_at_{cost_rate:g}"]["baseline_interval"]), name
    assert _number(figures["memory_idle_mb"]["baseline"])
    assert "figure" in done.stdout and "imgate" in done.stdout and "baseline" in done.stdout
