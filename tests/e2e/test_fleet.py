"""Two replicas of every service on one NATS, Redis and PostgreSQL, ten channels, 200 messages:
every message is answered exactly once and in order per conversation, every channel has one
owner. Then one replica of each service is stopped (SIGTERM) while answers stream: its work
moves over and still nothing is lost or doubled."""

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tools.devstack import wait_until
from tools.fleet import Fleet, FleetConfig, Report, Sent

pytestmark = pytest.mark.e2e

CHANNELS = 10
# DingTalk redelivers an un-ACKed message after about a minute; shorter here, so a frame a
# stopping connector failed to ACK still gets its answer in time and shows up as a redelivery.
REDELIVER_AFTER_S = 10.0
# A push this close before its socket closed may have crossed our close on the wire.
CLOSING_RACE_MS = 250


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    config = FleetConfig(
        connectors=2,
        routers=2,
        runners=2,
        channels=CHANNELS,
        database="postgres",
        answer_tokens=30,
        # The model is remote and waited on, not computed: one runner holds many runs at once,
        # so a single surviving runner still carries the whole load.
        extra_env={"RUNNER_MAX_CONCURRENT_RUNS": "32"},
    )
    with Fleet(config, tmp_path_factory.mktemp("fleet")) as fleet:
        for client_id in fleet.client_ids:
            fleet.sim("PATCH", f"/apps/{client_id}", {"redeliver_after": REDELIVER_AFTER_S})
        yield fleet


def overlapping_connections(fleet: Fleet, client_id: str, tolerance_ms: int = 500) -> list[tuple[str, str]]:
    """Pairs of the app's connections that were open at the same time (beyond `tolerance_ms`)
    while both still took pushes: two replicas holding one channel."""
    now = int(time.time() * 1000)
    spans = [
        (c["connection_id"], c["opened_at"], c["disconnect_sent_at"] or c["closed_at"] or now)
        for c in fleet.sim("GET", f"/apps/{client_id}/connections")
    ]
    return [
        (a, b)
        for i, (a, a_open, a_end) in enumerate(spans)
        for b, b_open, b_end in spans[i + 1 :]
        if min(a_end, b_end) - max(a_open, b_open) > tolerance_ms
    ]


def assert_one_owner_each(fleet: Fleet) -> None:
    live = set(fleet.replicas("connector"))
    owners = fleet.owners()
    assert set(owners.values()) <= live, f"owners {owners}, live connectors {live}"
    for client_id in fleet.client_ids:
        assert len(fleet.connections(client_id)) == 1, f"{client_id}: {fleet.connections(client_id)}"
        assert not overlapping_connections(fleet, client_id), f"{client_id} had two owners at once"


def assert_each_answered_once_in_order(fleet: Fleet, report: Report) -> None:
    problems = report.lost + report.doubled + report.out_of_order
    assert not problems, f"{report.summary()}\n{report.describe(problems)}\n{fleet.logs()}"
    for outcome in report.outcomes:
        assert outcome.final_text is not None and outcome.sent.text in outcome.final_text, (
            f"the answer belongs to its message: {outcome}"
        )
        assert not outcome.failed and not outcome.open_cards, outcome


def bursts(fleet: Fleet, user: str, per_conversation: int) -> list[Sent]:
    """Several messages in a row from one user per channel: they wait and run in order."""
    return [
        fleet.send(client_id, user, f"{user}-{client_id}-{i}")
        for i in range(per_conversation)
        for client_id in fleet.client_ids
    ]


def test_every_message_is_answered_once_and_in_order_by_two_replicas_of_everything(fleet: Fleet) -> None:
    driver = fleet.drive_in_background(170, rate_per_s=20, conversations_per_channel=4)
    sent = bursts(fleet, "burst", 3)
    sent += driver.result()
    assert len(sent) == 200
    report = fleet.collect(sent, timeout_s=120)
    assert_each_answered_once_in_order(fleet, report)
    assert_one_owner_each(fleet)
    # The first connector up takes every channel; the other gets its share handed over.
    wait_until(lambda: len(set(fleet.owners().values())) == 2, 60, "channels spread over both connectors")
    assert_one_owner_each(fleet)


def most_loaded_connector(fleet: Fleet) -> str:
    owners = list(fleet.owners().values())
    return max(fleet.replicas("connector"), key=owners.count)


def streaming(fleet: Fleet, sent: list[Sent]) -> bool:
    outcomes = fleet.read(sent).outcomes
    return any(o.first_text_at is not None and o.final_at is None for o in outcomes)


def test_stopping_one_replica_of_each_service_mid_stream_moves_its_work_over(fleet: Fleet) -> None:
    # Slower answers, so the stopped runner has runs in hand and the connector cards on screen.
    fleet.model_sim("PATCH", "/config", {"tokens_per_s": 15})
    driver = fleet.drive_in_background(100, rate_per_s=10, conversations_per_channel=3)
    deadline = time.monotonic() + 20
    while not (len(driver.so_far()) >= 30 and streaming(fleet, driver.so_far())):
        assert time.monotonic() < deadline, "answers never started streaming"
        time.sleep(0.2)
    connector = most_loaded_connector(fleet)
    stopped = [connector, fleet.replicas("router")[0], fleet.replicas("agent-runner")[0]]
    with ThreadPoolExecutor(len(stopped)) as pool:
        codes = dict(zip(stopped, pool.map(fleet.terminate, stopped), strict=True))
    assert all(code == 0 for code in codes.values()), f"each drained and exited by itself: {codes}"
    sent = driver.result()
    report = fleet.collect(sent, timeout_s=120)
    assert_each_answered_once_in_order(fleet, report)
    survivors: dict[str, Any] = {s: fleet.replicas(s) for s in ("connector", "router", "agent-runner")}
    assert all(len(names) == 1 for names in survivors.values()), survivors
    assert set(fleet.owners().values()) == set(survivors["connector"]), "channels moved to the survivor"
    assert_one_owner_each(fleet)
    assert not platform_redeliveries(fleet), "the stopped connector ACKed every frame it had read"


def platform_redeliveries(fleet: Fleet) -> list[dict[str, Any]]:
    """Pushes imsim repeated because a frame was never ACKed. A frame pushed as its socket was
    closing is excused: the stopping connector still read and published it, but the ACK could
    no longer go out (the bus drops the repeat, and `doubled` would show an answer given twice)."""
    repeated = []
    for client_id in fleet.client_ids:
        closed = {
            c["connection_id"]: c["closed_at"] for c in fleet.sim("GET", f"/apps/{client_id}/connections")
        }
        deliveries = fleet.sim("GET", f"/apps/{client_id}/deliveries")
        for d in deliveries:
            if not d["redelivery"] or d["forced"]:
                continue
            before = [e for e in deliveries if e["msg_id"] == d["msg_id"] and e["at"] < d["at"]]
            if before and all(_pushed_as_it_closed(e, closed) for e in before):
                continue
            repeated.append(d)
    return repeated


def _pushed_as_it_closed(delivery: dict[str, Any], closed_at: dict[str, int | None]) -> bool:
    closed = closed_at.get(delivery["connection_id"])
    return closed is not None and 0 <= closed - delivery["at"] <= CLOSING_RACE_MS
