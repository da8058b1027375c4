"""The connector's acceptance criteria, each against imsim with a real nats-server and Redis.

The router and the runner are stood in for by an instant agent (see stack.py), so what is tested
is the connector itself: nothing lost, nothing answered twice, whatever DingTalk and the bus do.
"""

import asyncio
import signal
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.bus import provision_streams
from imgate_common.secrets import SecretBox
from imgate_common.status import ChannelStatusStore
from imgate_connector.lease import ChannelLease
from imgate_connector.wording import WORDINGS
from tests.connector.sim import Sim, final, until
from tests.connector.stack import (
    InstantAgent,
    add_channel,
    connector,
    new_channel_ids,
    process_env,
    start_connector_process,
)
from tests.support.openai_stub import free_port
from tools.devstack import LocalStack


@pytest.fixture
def world(
    imsim: str, private_nats: str, database_url: str, secret_keys: str, key_prefix: str
) -> dict[str, Any]:
    return {
        "nats_url": private_nats,
        "database_url": database_url,
        "prefix": key_prefix,
        "secret_keys": secret_keys,
        "imsim": imsim,
    }


async def connected(sims: list[Sim], within: float = 10) -> None:
    async def all_up() -> bool:
        return all([len(await s.open_connections()) == 1 for s in sims])

    await until(all_up, within=within)


async def answers_of(sim: Sim, msg_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    return {msg_id: await sim.answers(msg_id) for msg_id in msg_ids}


async def all_answered(sim: Sim, msg_ids: list[str], within: float = 60) -> dict[str, list[dict[str, Any]]]:
    """Wait until every message has a final answer; returns each message's answers."""
    found: dict[str, list[dict[str, Any]]] = {}

    async def done() -> bool:
        nonlocal found
        found = {}
        for msg_id in msg_ids:
            found[msg_id] = await sim.answers(msg_id)
        return all(a and all(final(x) for x in a) for a in found.values())

    try:
        await until(done, within=within)
    except TimeoutError:
        missing = [m for m, a in found.items() if not a or not all(final(x) for x in a)]
        shown = {m: found[m] for m in missing[:3]}
        raise AssertionError(f"{len(missing)} of {len(msg_ids)} unanswered, e.g. {shown}") from None
    return found


def shown_text(answer: dict[str, Any]) -> str:
    return str(answer["content"] if answer["kind"] == "card" else answer["text"])


async def test_each_message_delivered_twice_is_answered_once(
    world: dict[str, Any],
    bus: tuple[NATS, JetStreamContext],
    db: async_sessionmaker[AsyncSession],
    box: SecretBox,
    imsim: str,
    http: httpx.AsyncClient,
) -> None:
    _, js = bus
    sim = await Sim.create(imsim, http, redeliver_after=30)
    [channel] = new_channel_ids(1)
    agent = InstantAgent(js, {channel})
    await agent.start()
    try:
        async with connector(**world):
            await add_channel(db, box, channel, sim.app, sim.secret)
            await connected([sim])
            sent = []
            for i in range(10):
                message = await sim.send(f"question {i}", sender_staff_id=f"user{i}")
                sent.append(message["msg_id"])
                # the same msgId again at once (often before our ACK), as DingTalk may do
                await sim.post(f"messages/{quote(message['msg_id'], safe='')}/redeliver")
            answers = await all_answered(sim, sent, within=30)
            for msg_id in sent:  # and once more after it was answered
                await sim.post(f"messages/{quote(msg_id, safe='')}/redeliver")
            await asyncio.sleep(1.5)
            answers = await answers_of(sim, sent)
    finally:
        await agent.stop()
    for i, msg_id in enumerate(sent):
        [answer] = answers[msg_id]
        assert answer["kind"] == "card" and answer["content"] == f"Echo: question {i}"
    assert sorted(agent.received) == sorted(sent), "the bus let each message through once"
    counters = await sim.counters()
    assert counters["stream"]["forced_duplicates"] == 20


async def test_periodic_disconnects_during_100_messages_lose_and_double_nothing(
    world: dict[str, Any],
    bus: tuple[NATS, JetStreamContext],
    db: async_sessionmaker[AsyncSession],
    box: SecretBox,
    imsim: str,
    http: httpx.AsyncClient,
) -> None:
    _, js = bus
    sim = await Sim.create(imsim, http, redeliver_after=2, disconnect_grace=1)
    [channel] = new_channel_ids(1)
    agent = InstantAgent(js, {channel}, chunks=3, delay_s=0.02)
    await agent.start()
    try:
        async with connector(**world, card_qps=400):
            await add_channel(db, box, channel, sim.app, sim.secret)
            await connected([sim])
            await sim.faults(disconnect_every=1.5)
            sent = []
            for i in range(100):
                message = await sim.send(f"m{i}", sender_staff_id=f"u{i}")
                sent.append(message["msg_id"])
                # The traffic spans more than three disconnect periods of its own (answers come
                # at once, so the test's time is the sending's).
                await asyncio.sleep(0.06)
            answers = await all_answered(sim, sent, within=90)
            await sim.faults(disconnect_every=None)
            await asyncio.sleep(2.5)  # past redeliver_after: anything un-ACKed comes back now
            answers = await answers_of(sim, sent)
    finally:
        await agent.stop()
    counters = await sim.counters()
    assert counters["connections"]["periodic_disconnects"] >= 3, counters["connections"]
    lost = [m for m in sent if not answers[m]]
    doubled = [m for m in sent if len(answers[m]) > 1]
    assert lost == [] and doubled == [], f"lost {len(lost)}, doubled {len(doubled)}"
    for i, msg_id in enumerate(sent):
        assert shown_text(answers[msg_id][0]) == f"Echo: m{i}"
    assert len(agent.received) == 100 == len(set(agent.received))


async def test_a_half_dead_socket_is_replaced_and_its_message_answered(
    world: dict[str, Any],
    bus: tuple[NATS, JetStreamContext],
    db: async_sessionmaker[AsyncSession],
    box: SecretBox,
    imsim: str,
    http: httpx.AsyncClient,
) -> None:
    _, js = bus
    sim = await Sim.create(imsim, http, redeliver_after=1)
    [channel] = new_channel_ids(1)
    agent = InstantAgent(js, {channel})
    await agent.start()
    try:
        async with connector(**world, ping_interval_s=0.5, stale_after_s=2.0):
            await add_channel(db, box, channel, sim.app, sim.secret)
            await connected([sim])
            [old] = await sim.open_connections()
            await sim.post("connections/half-dead", {"connection_id": old["connection_id"]})
            started = time.monotonic()
            sent = await sim.send("are you there?")  # swallowed by the dead socket

            async def replaced() -> bool:
                return any(c["connection_id"] != old["connection_id"] for c in await sim.open_connections())

            await until(replaced, within=10)
            assert time.monotonic() - started < 2.0 + 1.5, "detected within stale_after_s, then reconnected"
            [answer] = (await all_answered(sim, [sent["msg_id"]]))[sent["msg_id"]]
            assert answer["content"] == "Echo: are you there?"
    finally:
        await agent.stop()


async def test_card_qps_limited_to_10_at_5_messages_a_second_still_finishes_every_answer(
    world: dict[str, Any],
    bus: tuple[NATS, JetStreamContext],
    db: async_sessionmaker[AsyncSession],
    box: SecretBox,
    imsim: str,
    http: httpx.AsyncClient,
    redis_client: Redis,
) -> None:
    _, js = bus
    sim = await Sim.create(imsim, http, redeliver_after=30)
    [channel] = new_channel_ids(1)
    agent = InstantAgent(js, {channel}, chunks=6, delay_s=0.1)
    await agent.start()
    try:
        async with connector(**world):  # our budget: the default 20/s; DingTalk allows 10
            await add_channel(db, box, channel, sim.app, sim.secret)
            await connected([sim])
            await sim.faults(card_qps_limit=10)
            sent = []
            for i in range(20):
                message = await sim.send(f"busy {i}", sender_staff_id=f"p{i}")
                sent.append(message["msg_id"])
                await asyncio.sleep(0.2)
            answers = await all_answered(sim, sent, within=90)

            async def counted() -> bool:
                status = await ChannelStatusStore(redis_client, world["prefix"]).get(channel)
                return status is not None and status.replies_out == 20

            await until(counted, within=5)
            status = await ChannelStatusStore(redis_client, world["prefix"]).get(channel)
    finally:
        await agent.stop()
    # 5 answers/s need 15 card calls/s for their opens and finals alone, more than DingTalk's 10:
    # once throttled down, new answers go out as one message each (no card), and cards come back
    # as the rate recovers. Every answer is shown exactly once, whole.
    for i, msg_id in enumerate(sent):
        [answer] = answers[msg_id]
        if answer["kind"] == "card":
            assert answer["flow_status"] == "3" and answer["finalized"]
            assert answer["content"] == f"Echo: busy {i}"
        else:
            assert answer["kind"] == "markdown" and answer["text"] == f"Echo: busy {i}"
    assert any(answers[msg_id][0]["kind"] == "card" for msg_id in sent)
    counters = await sim.counters()
    assert status is not None and status.rate_limit_hits == counters["throttled"]["403"]


async def test_with_the_card_apis_down_every_answer_arrives_once_by_session_webhook(
    world: dict[str, Any],
    bus: tuple[NATS, JetStreamContext],
    db: async_sessionmaker[AsyncSession],
    box: SecretBox,
    imsim: str,
    http: httpx.AsyncClient,
) -> None:
    _, js = bus
    sim = await Sim.create(imsim, http, redeliver_after=30)
    [channel] = new_channel_ids(1)
    agent = InstantAgent(js, {channel})
    await agent.start()
    try:
        async with connector(**world):
            await add_channel(db, box, channel, sim.app, sim.secret)
            await connected([sim])
            await sim.faults(card_down=True)
            sent = [(await sim.send(f"card-less {i}", sender_staff_id=f"w{i}"))["msg_id"] for i in range(8)]
            await all_answered(sim, sent)
            await asyncio.sleep(1)
            answers = await answers_of(sim, sent)
    finally:
        await agent.stop()
    for i, msg_id in enumerate(sent):
        [answer] = answers[msg_id]
        assert answer["kind"] == "markdown" and answer["via"] == "webhook"
        assert answer["text"] == f"Echo: card-less {i}"
    assert await sim.get("cards") == []


async def test_nats_down_for_10_s_nothing_is_acked_before_it_is_stored_and_all_is_answered_after(
    tmp_path: Path,
    database_url: str,
    secret_keys: str,
    key_prefix: str,
    db: async_sessionmaker[AsyncSession],
    box: SecretBox,
    imsim: str,
    http: httpx.AsyncClient,
) -> None:
    stack = LocalStack(tmp_path, log_dir=tmp_path / "logs")
    url = stack.start_nats(f"nats://127.0.0.1:{free_port()}")
    nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
    js = nc.jetstream()
    await provision_streams(js)
    sim = await Sim.create(imsim, http, redeliver_after=2)
    [channel] = new_channel_ids(1)
    agent = InstantAgent(js, {channel})
    await agent.start()
    world = {"nats_url": url, "database_url": database_url, "prefix": key_prefix}
    try:
        async with connector(**world, secret_keys=secret_keys, imsim=imsim):
            await add_channel(db, box, channel, sim.app, sim.secret)
            await connected([sim])
            before = (await sim.send("before the outage"))["msg_id"]
            await all_answered(sim, [before])

            [server] = [p for p in stack.processes if p.name == "nats"]
            server.popen.send_signal(signal.SIGTERM)
            server.popen.wait(10)
            stack.processes.remove(server)
            down_at = time.monotonic()
            sent = [(await sim.send(f"during {i}", sender_staff_id=f"d{i}"))["msg_id"] for i in range(5)]
            while time.monotonic() - down_at < 10:
                for msg_id in sent:
                    assert 200 not in await sim.acks_for(msg_id), "ACKed while the bus could not store it"
                await asyncio.sleep(0.5)
            assert len([d for d in await sim.get("deliveries") if d["msg_id"] in sent]) > len(sent), (
                "DingTalk kept redelivering what was not ACKed"
            )
            stack.start_nats(url)  # the same port and store: the bus is back
            answers = await all_answered(sim, sent, within=60)
            await asyncio.sleep(2.5)
            answers = await answers_of(sim, sent)
    finally:
        await agent.stop()
        await nc.close()
        stack.stop()
    for i, msg_id in enumerate(sent):
        [answer] = answers[msg_id]
        assert shown_text(answer) == f"Echo: during {i}"


async def test_a_second_replica_gets_its_share_of_the_channels(
    world: dict[str, Any],
    db: async_sessionmaker[AsyncSession],
    box: SecretBox,
    imsim: str,
    http: httpx.AsyncClient,
    redis_client: Redis,
) -> None:
    sims = [await Sim.create(imsim, http) for _ in range(6)]
    channels = new_channel_ids(6)
    lease = ChannelLease(redis_client, world["prefix"], "observer", 1)
    async with connector(**world) as first:
        for channel, sim in zip(channels, sims, strict=True):
            await add_channel(db, box, channel, sim.app, sim.secret)
        await connected(sims)
        assert set((await lease.holders(channels)).values()) == {first.instance_id}
        async with connector(**world) as second:

            async def shared() -> bool:
                holders = list((await lease.holders(channels)).values())
                return holders.count(second.instance_id) >= 2 and None not in holders

            await until(shared, within=20)
            await connected(sims)
            holders = list((await lease.holders(channels)).values())
            assert holders.count(first.instance_id) >= 2


async def replica_holders(lease: ChannelLease, channels: list[int]) -> dict[int, str | None]:
    return await lease.holders(channels)


@pytest.fixture
async def two_replicas(
    tmp_path: Path,
    world: dict[str, Any],
    db: async_sessionmaker[AsyncSession],
    box: SecretBox,
    imsim: str,
    http: httpx.AsyncClient,
    redis_client: Redis,
) -> Any:
    """Two connector processes with production timings, then ten channels they share."""
    stack = LocalStack(tmp_path, log_dir=tmp_path / "logs")
    env = process_env(
        **world, lease_ttl_s=6.0, lease_interval_s=1.0, takeover_grace_s=2.0, reconcile_interval_s=1.0
    )
    names = ["replica-a", "replica-b"]
    for name in names:
        start_connector_process(stack, name, env)
    lease = ChannelLease(redis_client, world["prefix"], "observer", 1)

    async def both_live() -> bool:
        members = await redis_client.zrange(f"{world['prefix']}:connector-replicas", 0, -1)
        return len(members) == 2

    await until(both_live, within=30)
    sims = [await Sim.create(imsim, http) for _ in range(10)]
    channels = new_channel_ids(10)
    for channel, sim in zip(channels, sims, strict=True):
        await add_channel(db, box, channel, sim.app, sim.secret)
    try:
        await connected(sims, within=20)
        yield stack, names, lease, channels, sims
    finally:
        stack.stop()
        logs = "\n".join(p.read_text()[-3000:] for p in (tmp_path / "logs").glob("*.log"))
        print(logs)


async def test_two_replicas_hold_each_channel_once_and_a_killed_ones_move_within_15_s(
    two_replicas: Any,
) -> None:
    stack, names, lease, channels, sims = two_replicas
    holders = await lease.holders(channels)
    assert None not in holders.values()
    assert set(holders.values()) == set(names), f"both replicas hold channels: {holders}"
    for sim in sims:
        assert len(await sim.open_connections()) == 1, "one connection per channel, from one replica"
    victim = next(iter(holders.values()))
    moved = [c for c, h in holders.items() if h == victim]
    victim_sims = [s for c, s in zip(channels, sims, strict=True) if c in moved]
    before = {s.app: (await s.open_connections())[0]["connection_id"] for s in victim_sims}
    stack.kill(victim)  # kill -9: no lease released, no goodbye
    killed_at = time.monotonic()

    async def taken_over() -> bool:
        for sim in victim_sims:
            open_now = await sim.open_connections()
            if not any(c["connection_id"] != before[sim.app] for c in open_now):
                return False
        return True

    await until(taken_over, within=20)
    took = time.monotonic() - killed_at
    assert took < 15, f"took over after {took:.1f} s"
    survivor = next(n for n in names if n != victim)
    assert set((await lease.holders(channels)).values()) == {survivor}


async def test_a_replica_stopped_with_sigterm_hands_its_channels_over_at_once(two_replicas: Any) -> None:
    stack, names, lease, channels, sims = two_replicas
    holders = await lease.holders(channels)
    leaving = next(iter(holders.values()))
    survivor = next(n for n in names if n != leaving)
    [process] = [p for p in stack.processes if p.name == leaving]
    stopped_at = time.monotonic()
    process.popen.send_signal(signal.SIGTERM)

    async def all_on_survivor() -> bool:
        return set((await lease.holders(channels)).values()) == {survivor}

    await until(all_on_survivor, within=15)
    await connected(sims, within=10)
    took = time.monotonic() - stopped_at
    assert took < 5, f"handed over after {took:.1f} s (a dead replica's channels wait for the lease TTL)"
    assert process.popen.wait(10) == 0


async def test_a_card_whose_close_failed_ends_pointing_to_its_plain_answer_once_cards_are_back(
    world: dict[str, Any],
    bus: tuple[NATS, JetStreamContext],
    db: async_sessionmaker[AsyncSession],
    box: SecretBox,
    imsim: str,
    http: httpx.AsyncClient,
) -> None:
    _, js = bus
    sim = await Sim.create(imsim, http, redeliver_after=30)
    [channel] = new_channel_ids(1)
    agent = InstantAgent(js, {channel}, gate=asyncio.Event())
    await agent.start()
    try:
        async with connector(**world, card_mend_first_s=0.2):
            await add_channel(db, box, channel, sim.app, sim.secret)
            await connected([sim])
            sent = [(await sim.send(f"stranded {i}", sender_staff_id=f"s{i}"))["msg_id"] for i in range(4)]

            async def thinking() -> bool:
                found = await answers_of(sim, sent)
                return all([a["kind"] for a in found[m]] == ["card"] for m in sent)

            await until(thinking)
            await sim.faults(card_down=True)
            assert agent.gate is not None
            agent.gate.set()

            async def answered_in_plain() -> bool:
                found = await answers_of(sim, sent)
                return all(any(a["kind"] == "markdown" for a in found[m]) for m in sent)

            await until(answered_in_plain, within=30)
            await sim.faults(card_down=False)
            answers = await all_answered(sim, sent, within=30)
    finally:
        await agent.stop()
    pointer = WORDINGS["zh"].sent_below
    for i, msg_id in enumerate(sent):
        kinds = sorted(a["kind"] for a in answers[msg_id])
        assert kinds == ["card", "markdown"], answers[msg_id]
        [card] = [a for a in answers[msg_id] if a["kind"] == "card"]
        [plain] = [a for a in answers[msg_id] if a["kind"] == "markdown"]
        assert plain["text"] == f"Echo: stranded {i}", "the answer, once"
        assert card["content"] == pointer and card["flow_status"] == "3", "the card ends, pointing to it"
