"""In-process checks of what the HTTP tests cannot wait for (a one-minute ticket) and of
start-up configuration parsing."""

import pytest

from imsim import state as state_module
from imsim.settings import AppSpec, Settings
from imsim.state import TICKET_TTL, SimState


def test_ticket_expires_after_a_minute(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(state_module.time, "monotonic", lambda: clock[0])
    state = SimState()
    app = state.upsert_app("a", "s")
    fresh = state.issue_ticket(app, [], "ua", "127.0.0.1")
    stale = state.issue_ticket(app, [], "ua", "127.0.0.1")
    clock[0] += TICKET_TTL - 1
    assert state.redeem_ticket(fresh) is not None
    clock[0] += 2
    assert state.redeem_ticket(stale) is None


def test_app_spec_parsing():
    assert AppSpec.parse("id:secret") == AppSpec(client_id="id", client_secret="secret")
    assert AppSpec.parse("id:secret:robot").robot_code == "robot"
    for bad in ("id", "id:", ":secret", "a:b:c:d"):
        with pytest.raises(ValueError):
            AppSpec.parse(bad)
    apps = Settings.apps_from_env({"IMSIM_APPS": "a:1, b:2:rb ,"})
    assert [(a.client_id, a.robot_code) for a in apps] == [("a", None), ("b", "rb")]
    assert Settings.apps_from_env({}) == []
