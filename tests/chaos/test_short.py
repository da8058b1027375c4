"""The short chaos scenarios (`python chaos/run.py --short`) in CI: side by side on one fleet,
none may lose or double a message."""

from pathlib import Path

import pytest

from chaos.run import SCENARIOS, run_together, table

pytestmark = pytest.mark.e2e


def test_short_scenarios_lose_and_double_nothing(tmp_path: Path) -> None:
    short = [s for s in SCENARIOS if s.short]
    assert short, "the CI subset is empty"
    results = run_together(short, tmp_path)
    summary = table(results)
    for result in results:
        assert result.lost == 0, f"{result.scenario.name} lost messages\n{summary}\n{result.problems()}"
        assert result.doubled == 0, f"{result.scenario.name} doubled answers\n{summary}\n{result.problems()}"
        assert len(result.report.outcomes) >= 100  # and probes, if the fault outlasted the traffic
