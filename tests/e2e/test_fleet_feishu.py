"""A fleet on Feishu (`FleetConfig(platform="feishu")`): its channels connect to imsim's Feishu
apps, `drive` sends as Feishu users and `collect` reads their CardKit cards back."""

from pathlib import Path

import pytest

from tools.fleet import FEISHU, Fleet, FleetConfig

pytestmark = pytest.mark.e2e


def test_a_feishu_fleet_answers_every_message_once_and_in_order(tmp_path: Path) -> None:
    config = FleetConfig(platform=FEISHU, channels=2, model_ttft_ms=20, answer_tokens=12)
    with Fleet(config, tmp_path) as fleet:
        assert all(len(fleet.connections(c)) == 1 for c in fleet.client_ids)
        sent = fleet.drive(12, rate_per_s=6, conversations_per_channel=2)
        report = fleet.collect(sent, timeout_s=60)
    assert {s.platform for s in sent} == {FEISHU}
    summary = report.summary()
    assert (summary["answered"], summary["lost"], summary["doubled"]) == (12, 0, 0), report.describe(
        report.lost + report.doubled
    )
    assert not report.out_of_order and summary["open_cards"] == 0
    assert all(o.thinking_at is not None and o.final_text for o in report.outcomes)
