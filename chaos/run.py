"""Chaos scenarios: the product as processes (`tools.fleet`), 100 messages at 5 a second, and one
fault per scenario. Prints lost / doubled / recovered-in per scenario and exits non-zero on any
loss or doubling.

    python chaos/run.py                  # every scenario, each on a fleet of its own
    python chaos/run.py --list
    python chaos/run.py --scenario kill-runner --scenario restart-nats
    python chaos/run.py --short          # the CI subset, side by side on one fleet
    python chaos/run.py --scenario platform-outage --outage-s 120   # the slow one, shortened

What counts is what the users see in imsim: every message ends in exactly one final answer (a
clear failure message counts, for the model-error scenario). "Recovered in" is the time from the
fault to the first good answer to a message sent after it.
"""

import argparse
import asyncio
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import asyncpg
import nats
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imgate_common.messages import run_id_for
from tools.fleet import DINGTALK, Driver, Fleet, FleetConfig, Report, Sent

MESSAGES = 100
RATE_PER_S = 5.0
CHANNELS_PER_SCENARIO = 2
# Each conversation gets a message every 4 s: answers wait their turn now and then, and the
# product's queue limit (5 waiting per conversation) is far away unless the fleet stalls.
CONVERSATIONS_PER_CHANNEL = 10
# The fault comes this far into the traffic, so answers are flowing when it hits.
FAULT_AFTER_S = 6.0
# Faults that last (card APIs down, model errors) last this long.
FAULT_FOR_S = 20.0
# The platform outage scenario: card APIs and plain messages (sessionWebhook, robot API) down
# this long, longer than the reply consumer's old 8.5 minutes of tries (`--outage-s` shortens it).
OUTAGE_S = 15 * 60.0
# Long enough for DingTalk's own redelivery (about a minute after a lost ACK) to land.
COLLECT_TIMEOUT_S = 150.0
# A card left open beside its plain answer (card calls failed) must be closed once the platform
# is back: card calls resume after the connector's cool-down (15 s), a close that failed
# otherwise is tried again within 36 s. Only a card still open after this long counts.
CARD_CLOSE_WINDOW_S = 60.0
# A fault that outlasts the traffic is followed by probe messages (same pace) for at most this
# long, until one gets a good answer: that is when the scenario recovered.
PROBE_FOR_S = 60.0
# The model is waited on, not computed: runners hold many runs at once.
FLEET_ENV = {"RUNNER_MAX_CONCURRENT_RUNS": "32"}


@dataclass
class Lane:
    """One scenario's share of a fleet: its channels, its traffic, when its fault hit."""

    fleet: Fleet
    client_ids: list[str]
    driver: Driver | None = None
    fault_at: float | None = None  # epoch seconds
    extra: list[Sent] = field(default_factory=list)  # sent by the fault, judged like the traffic

    def sent_so_far(self) -> list[Sent]:
        return self.driver.so_far() if self.driver else []

    def hit(self) -> None:
        self.fault_at = time.time()

    def sim_apps(self, method: str, suffix: str, body: object) -> None:
        for client_id in self.client_ids:
            self.fleet.sim(method, f"/apps/{client_id}{suffix}", body)


Fault = Callable[[Lane], None]
# What a scenario checks after the run, besides loss and doubling: notes for the summary.
Check = Callable[[Lane, Report], list[str]]


@dataclass(frozen=True)
class Scenario:
    name: str
    about: str
    # Pulled FAULT_AFTER_S into the traffic, in a thread of its own (it may last a while).
    fault: Fault | None = None
    # Set before the traffic starts: a condition that holds for the whole run.
    condition: Fault | None = None
    connectors: int = 1
    routers: int = 1
    runners: int = 1
    private_redis: bool = False
    short: bool = False  # part of the CI subset
    slow: bool = False  # takes many minutes (never part of the CI subset)
    failures_expected: bool = False  # the users get a clear failure message, not an answer
    env: dict[str, str] = field(default_factory=dict)  # for the services of its fleet
    check: Check | None = None

    def fleet_config(self) -> FleetConfig:
        return FleetConfig(
            connectors=self.connectors,
            routers=self.routers,
            runners=self.runners,
            channels=CHANNELS_PER_SCENARIO,
            database="postgres",  # what production runs; SQLite serializes writers across replicas
            private_redis=self.private_redis,
            extra_env={**FLEET_ENV, **self.env},
        )


@dataclass
class Result:
    scenario: Scenario
    report: Report
    fault_at: float | None
    took_s: float
    notes: list[str] = field(default_factory=list)
    stuck: int = 0  # conversations still holding a run lock or waiting runs at the end

    @property
    def lost(self) -> int:
        return len(self.report.lost)

    @property
    def doubled(self) -> int:
        return len(self.report.doubled)

    @property
    def ok(self) -> bool:
        return not self.lost and not self.doubled and not self.stuck

    @property
    def recovered_in(self) -> float | None:
        """From the fault to the first good answer to a message sent after it."""
        if self.fault_at is None:
            return None
        at = self.fault_at
        good = [
            o.final_at for o in self.report.outcomes if o.sent.sent_at >= at and o.final_at and not o.failed
        ]
        return round(min(good) - at, 1) if good else None

    def problems(self) -> str:
        report = self.report
        return report.describe(report.lost + report.doubled + report.out_of_order)


# -- faults ---------------------------------------------------------------------------------------


def kill_connector(lane: Lane) -> None:
    """kill -9 the connector that holds this scenario's first channel."""
    owner = lane.fleet.owners()[lane.client_ids[0]]
    victim = owner if owner in lane.fleet.replicas("connector") else lane.fleet.replicas("connector")[0]
    lane.hit()
    lane.fleet.kill(victim)


def kill_router(lane: Lane) -> None:
    lane.hit()
    lane.fleet.kill(lane.fleet.replicas("router")[0])


def kill_runner_mid_stream(lane: Lane) -> None:
    """kill -9 a runner while an answer is being written."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        outcomes = lane.fleet.read(lane.sent_so_far()).outcomes
        if any(o.first_text_at and not o.final_at for o in outcomes):
            break
        time.sleep(0.1)
    lane.hit()
    lane.fleet.kill(lane.fleet.replicas("agent-runner")[0])


def restart_nats(lane: Lane) -> None:
    lane.hit()
    lane.fleet.restart_nats(down_s=3.0)


def restart_redis(lane: Lane) -> None:
    lane.hit()
    lane.fleet.restart_redis(down_s=3.0)


def black_hole_redis(lane: Lane) -> None:
    """Redis stops answering (no error, no closed connection) for a while, then answers again."""
    lane.hit()
    lane.fleet.black_hole_redis(FAULT_FOR_S)


def disconnect_every_5_s(lane: Lane) -> None:
    lane.hit()
    lane.sim_apps("PATCH", "/faults/config", {"disconnect_every": 5})


def redeliver_everything_twice(lane: Lane) -> None:
    """Every message the scenario sends is pushed twice more (new frame id, same msgId): at
    once, and again a few seconds later, after its answer may have gone out."""
    lane.hit()

    def redeliver() -> None:
        done: dict[str, int] = {}
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 10:
            now = time.time()
            for sent in lane.sent_so_far():
                due = [sent.sent_at + 0.3, sent.sent_at + 4.0]
                count = done.get(sent.msg_id, 0)
                if count < len(due) and now >= due[count]:
                    done[sent.msg_id] = count + 1
                    quiet_since = time.monotonic()
                    path = f"/apps/{sent.client_id}/messages/{sent.msg_id}/redeliver"
                    try:
                        lane.fleet.sim("POST", path)
                    except Exception as exc:  # 409: no connection at that moment; noted, not fatal
                        print(f"  redeliver {sent.msg_id}: {exc}", file=sys.stderr)
            time.sleep(0.1)

    threading.Thread(target=redeliver, daemon=True, name="redeliverer").start()


def card_apis_down(lane: Lane) -> None:
    lane.hit()
    lane.sim_apps("PATCH", "/faults/config", {"card_down": True})
    time.sleep(FAULT_FOR_S)
    lane.sim_apps("PATCH", "/faults/config", {"card_down": False})


def platform_outage(lane: Lane) -> None:
    """Every way of answering fails (cards, sessionWebhook, robot API), then all is back:
    each answer must arrive once afterwards, or be reported as undeliverable."""
    lane.hit()
    lane.sim_apps("PATCH", "/faults/config", {"card_down": True, "messages_down": True})
    time.sleep(OUTAGE["for_s"])
    lane.sim_apps("PATCH", "/faults/config", {"card_down": False, "messages_down": False})


# Set from --outage-s before the scenario runs.
OUTAGE = {"for_s": OUTAGE_S}


def model_errors(lane: Lane) -> None:
    lane.hit()
    lane.fleet.model_sim("POST", "/fail", {"status": 503, "for_s": FAULT_FOR_S})


# -- the conversation queue and poison messages ---------------------------------------------------

# Each router exits right after publishing every Nth run request, before marking its message
# seen (ROUTER_CHAOS_EXIT_EVERY_N_RUNS); its replacement gets the message again 30 s later.
ROUTER_EXIT_EVERY_N_RUNS = 7
# A token no configured key decrypts: what an agent's stored key looks like after the secret
# keys were replaced without re-encrypting it.
FOREIGN_TOKEN = "gAAAAABoNotATokenTheseKeysCanRead=="


async def _db(url: str, sql: str, *args: object) -> list[dict[str, object]]:
    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        return [dict(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


def stuck_conversations(lane: Lane) -> int:
    """Conversations of the lane's channels that still hold a run lock or waiting runs once
    every answer is in: each would leave its next message waiting."""
    fleet = lane.fleet
    client = redis.Redis.from_url(fleet.redis_url)
    try:
        held = {
            key.decode().split(":")[-2]
            for kind in ("active", "queue")
            for key in client.scan_iter(f"{fleet.redis_prefix}:conv:*:{kind}")
        }
    finally:
        client.close()
    if not held:
        return 0
    channels = {fleet.channel_ids[c] for c in lane.client_ids}
    rows = asyncio.run(
        _db(fleet.database_url, "SELECT channel_id FROM conversations WHERE id = ANY($1::text[])", list(held))
    )
    return sum(1 for row in rows if row["channel_id"] in channels)


def replace_exited_routers(lane: Lane) -> None:
    """Routers exit on their own (ROUTER_CHAOS_EXIT_EVERY_N_RUNS); each is replaced at once."""
    lane.hit()
    wanted = len(lane.fleet.replicas("router"))

    def keep() -> None:
        deadline = time.monotonic() + COLLECT_TIMEOUT_S + PROBE_FOR_S
        while time.monotonic() < deadline:
            try:
                for _ in range(wanted - len(lane.fleet.replicas("router"))):
                    lane.fleet.start_replica("router", wait=False)
            except Exception as exc:  # the fleet is being stopped
                print(f"  router replacement: {exc}", file=sys.stderr)
                return
            time.sleep(0.5)

    threading.Thread(target=keep, daemon=True, name="router-replacer").start()


def router_exits(lane: Lane, report: Report) -> list[str]:
    logs = [p.read_text(errors="replace") for p in lane.fleet.log_dir.glob("router-*.log")]
    return [f"{sum(log.count('router_chaos_exit') for log in logs)} router exits between publish and seen"]


def misconfigure_user_mapping(lane: Lane) -> None:
    """The second channel now maps senders through LDAP with a filter naming a placeholder that
    does not exist: every message on it is a configuration error for the router."""
    channel_id = lane.fleet.channel_ids[lane.client_ids[1]]
    mapping = {
        "mode": "ldap",
        "url": "ldap://127.0.0.1:9",
        "bind_dn": "cn=reader,dc=example,dc=com",
        "bind_password": "reader-secret",
        "base_dn": "dc=example,dc=com",
        "user_filter": "(employeeNumber={badge_number})",
    }
    lane.hit()
    with lane.fleet.admin_api() as api:
        api.patch(f"/api/v1/channels/{channel_id}", json={"user_mapping": mapping}).raise_for_status()


def undecryptable_agent_key(lane: Lane) -> None:
    """The second channel now runs an agent whose stored API key no configured secret key can
    read: every run on it is a configuration error for the runner."""
    fleet = lane.fleet
    channel_id = fleet.channel_ids[lane.client_ids[1]]
    with fleet.admin_api() as api:
        agent = api.post(
            "/api/v1/agents",
            json={
                "name": f"stale-key-{channel_id}",
                "provider": "openai",
                "model": "modelsim",
                "base_url": fleet.model,
                "api_key": "sk-stale",
            },
        )
        agent.raise_for_status()
        agent_id = agent.json()["id"]
        stale = "UPDATE agents SET api_key_enc = $1 WHERE id = $2"
        asyncio.run(_db(fleet.database_url, stale, FOREIGN_TOKEN, agent_id))
        lane.hit()
        api.patch(f"/api/v1/channels/{channel_id}", json={"default_agent_id": agent_id}).raise_for_status()


def dead_letters_match_failures(lane: Lane, report: Report) -> list[str]:
    """Every failed message of the poisoned channel is one dead letter; the other channel had none."""
    poisoned = lane.fleet.channel_ids[lane.client_ids[1]]
    with lane.fleet.admin_api() as api:
        letters = api.get("/api/v1/dead-letters", params={"limit": 500}).json()
    mine = [d for d in letters if d["channel_id"] in {lane.fleet.channel_ids[c] for c in lane.client_ids}]
    other = [d for d in mine if d["channel_id"] != poisoned]
    failed_elsewhere = [o for o in report.failed if o.sent.client_id != lane.client_ids[1]]
    notes = [f"{len(mine)} dead letters for {len(report.failed)} failed messages"]
    if len(mine) != len(report.failed) or other or failed_elsewhere:
        notes.append("MISMATCH: a failure without its dead letter, or a healthy channel hit")
    return notes


# -- poison reply events ---------------------------------------------------------------------------

# A final answer containing this fails in the connector's reply consumer on every try
# (CONNECTOR_CHAOS_POISON_REPLY_MARK), as a renderer bug would; modelsim quotes the user's text.
POISON_REPLY_MARK = "poison-reply"
POISON_REPLIES = 6


def poison_replies(lane: Lane) -> None:
    """A few messages on the second channel, in the conversations the traffic uses, whose
    answers fail in the connector: each ends as a dead letter and a failed card, and the
    messages after them in their conversations are answered all the same."""
    lane.hit()
    client_id = lane.client_ids[1]
    for n in range(POISON_REPLIES):
        user = f"user{n % CONVERSATIONS_PER_CHANNEL + 1}"
        lane.extra.append(lane.fleet.send(client_id, user, f"{POISON_REPLY_MARK} {n}"))
        time.sleep(1 / RATE_PER_S)


def poisoned_replies_dead_lettered(lane: Lane, report: Report) -> list[str]:
    """Exactly the poisoned messages failed, each with one dead letter of the reply consumer."""
    fleet = lane.fleet
    poisoned = {run_id_for(DINGTALK, fleet.channel_ids[s.client_id], s.msg_id) for s in lane.extra}
    with fleet.admin_api() as api:
        letters = api.get("/api/v1/dead-letters", params={"limit": 500}).json()
    channels = {fleet.channel_ids[c] for c in lane.client_ids}
    mine = [d for d in letters if d["channel_id"] in channels]
    filed = {d["run_id"] for d in mine if d["consumer"].startswith("replies-")}
    failed = {o.sent.msg_id for o in report.failed}
    notes = [f"{len(mine)} dead letters for {len(lane.extra)} poisoned answers, {len(failed)} failed"]
    # A final that failed holds no later final of its conversation (rendering.py), so a later
    # answer can show before the poisoned card's failure sentence: counted apart.
    poisoned_at = {(s.client_id, s.conversation_id): s.sent_at for s in lane.extra}
    overtook = [
        o
        for o in report.out_of_order
        if o.sent.sent_at > poisoned_at.get((o.sent.client_id, o.sent.conversation_id), float("inf"))
    ]
    if overtook:
        notes.append(
            f"{len(overtook)} of those out of order came before a poisoned answer's failure sentence"
        )
    if filed != poisoned or len(mine) != len(poisoned) or failed != {s.msg_id for s in lane.extra}:
        notes.append("MISMATCH: a poisoned answer without its dead letter, or another message hit")
    return notes


# -- media flood --------------------------------------------------------------------------------

# The media bucket's cap in this scenario (CONNECTOR_MEDIA_BUCKET_MAX_BYTES), far below the
# pictures the flood sends: the flood fills it early and every picture after is skipped.
MEDIA_FLOOD_BUCKET_BYTES = 16 * 1024 * 1024
MEDIA_FLOOD_PICTURES = 40
MEDIA_FLOOD_PICTURE_BYTES = 1536 * 1024  # under the 5 MB a model is sent: each one is fetched
MEDIA_FLOOD_SENDERS = 8  # each sends 5: under the per-sender rate limit, so all are taken
MEDIA_FLOOD_RATE_PER_S = 2.0
# The connector's "picture not taken" sentence (wording.py), in the fleet's language.
MEDIA_SKIPPED_MARK = "文件存储空间暂时已满"


def agents_take_pictures(lane: Lane) -> None:
    """The lane's channels run an agent that takes images, so their pictures are fetched."""
    with lane.fleet.admin_api() as api:
        for client_id in lane.client_ids:
            channel = api.get(f"/api/v1/channels/{lane.fleet.channel_ids[client_id]}").json()
            agent_id = channel["default_agent_id"]
            api.patch(f"/api/v1/agents/{agent_id}", json={"supports_images": True}).raise_for_status()


def flood_pictures(lane: Lane) -> None:
    """Large pictures from a handful of senders, beside the scenario's text traffic."""
    lane.hit()
    fleet = lane.fleet
    for n in range(MEDIA_FLOOD_PICTURES):
        client_id = lane.client_ids[n % len(lane.client_ids)]
        picture = b"\x89PNG\r\n\x1a\n" + n.to_bytes(4, "big") * (MEDIA_FLOOD_PICTURE_BYTES // 4)
        upload = fleet.http.post(
            f"{fleet.imsim}/sim/apps/{client_id}/media",
            content=picture,
            headers={"content-type": "image/png"},
        )
        upload.raise_for_status()
        sender = f"flood{n % MEDIA_FLOOD_SENDERS}"
        fleet.sim(
            "POST",
            f"/apps/{client_id}/messages",
            {
                "msgtype": "picture",
                "content": {"downloadCode": upload.json()["download_code"]},
                "sender_staff_id": sender,
                "sender_nick": sender,
            },
        )
        time.sleep(1 / MEDIA_FLOOD_RATE_PER_S)


async def _media_bucket_bytes(nats_url: str) -> tuple[int, int]:
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info("OBJ_imgate-media")
        return info.state.bytes, info.config.max_bytes or -1
    finally:
        await nc.close()


def media_stayed_bounded(lane: Lane, report: Report) -> list[str]:
    """The bucket stayed under its cap, the flood did reach it, and each skipped picture's
    sender was told."""
    fleet = lane.fleet
    used, cap = asyncio.run(_media_bucket_bytes(fleet.nats_url))
    told = 0
    for client_id in lane.client_ids:
        for conversation in fleet.sim("GET", f"/apps/{client_id}/conversations"):
            told += sum(MEDIA_SKIPPED_MARK in str(item.get("text", "")) for item in conversation["items"])
    notes = [
        f"{MEDIA_FLOOD_PICTURES} pictures of {MEDIA_FLOOD_PICTURE_BYTES // 1024} KB sent, "
        f"{told} skipped (sender told), media bucket {used / 2**20:.1f} of {cap / 2**20:.0f} MiB"
    ]
    if used > cap or not told:
        notes.append("MISMATCH: the bucket passed its cap, or the flood never filled it")
    return notes


SCENARIOS = [
    Scenario("kill-connector", "kill -9 the connector holding the channel", kill_connector, connectors=2),
    Scenario("kill-router", "kill -9 a router", kill_router, routers=2),
    Scenario("kill-runner", "kill -9 a runner mid-stream", kill_runner_mid_stream, runners=2, short=True),
    Scenario("restart-nats", "restart nats-server (JetStream store kept)", restart_nats),
    Scenario(
        "restart-redis", "restart redis-server (append-only file kept)", restart_redis, private_redis=True
    ),
    Scenario(
        "redis-black-hole",
        f"redis-server stops answering for {FAULT_FOR_S:.0f} s (SIGSTOP), connections left open",
        black_hole_redis,
        private_redis=True,
    ),
    Scenario("imsim-disconnects", "imsim disconnects every 5 s", condition=disconnect_every_5_s, short=True),
    Scenario(
        "redelivered-twice",
        "imsim redelivers every message twice",
        condition=redeliver_everything_twice,
        short=True,
    ),
    Scenario("card-apis-down", f"imsim card APIs fail for {FAULT_FOR_S:.0f} s", card_apis_down),
    Scenario(
        "model-errors", f"model answers 503 for {FAULT_FOR_S:.0f} s", model_errors, failures_expected=True
    ),
    Scenario(
        "platform-outage",
        f"imsim card APIs, webhooks and robot API down for {OUTAGE_S / 60:.0f} min (--outage-s)",
        platform_outage,
        slow=True,
    ),
    Scenario(
        "router-exit-unseen",
        f"each router exits after every {ROUTER_EXIT_EVERY_N_RUNS}th run it publishes, before marking "
        "the message seen; replaced at once",
        condition=replace_exited_routers,
        routers=2,
        env={"ROUTER_CHAOS_EXIT_EVERY_N_RUNS": str(ROUTER_EXIT_EVERY_N_RUNS)},
        check=router_exits,
    ),
    Scenario(
        "poison-inbound",
        "one channel's LDAP user filter names an unknown placeholder (its messages fail in the router)",
        misconfigure_user_mapping,
        failures_expected=True,
        check=dead_letters_match_failures,
    ),
    Scenario(
        "poison-run",
        "one channel's agent key cannot be decrypted (its runs fail in the runner)",
        undecryptable_agent_key,
        failures_expected=True,
        check=dead_letters_match_failures,
    ),
    Scenario(
        "poison-reply",
        f"{POISON_REPLIES} answers on one channel fail in the connector's reply consumer on every try",
        poison_replies,
        failures_expected=True,
        env={"CONNECTOR_CHAOS_POISON_REPLY_MARK": POISON_REPLY_MARK},
        check=poisoned_replies_dead_lettered,
    ),
    Scenario(
        "media-flood",
        f"{MEDIA_FLOOD_PICTURES} large pictures into a media bucket capped at "
        f"{MEDIA_FLOOD_BUCKET_BYTES // 2**20} MiB, beside the text traffic",
        flood_pictures,
        condition=agents_take_pictures,
        env={"CONNECTOR_MEDIA_BUCKET_MAX_BYTES": str(MEDIA_FLOOD_BUCKET_BYTES)},
        check=media_stayed_bounded,
    ),
]
BY_NAME = {s.name: s for s in SCENARIOS}


# -- running ----------------------------------------------------------------------------------------


def good_answer_since(lane: Lane, sent: list[Sent], at: float) -> bool:
    outcomes = lane.fleet.read(sent).outcomes
    return any(o.sent.sent_at >= at and o.final_at and not o.failed for o in outcomes)


def probe(lane: Lane, sent: list[Sent]) -> list[Sent]:
    """Probe messages after the traffic, while no message sent after the fault got a good
    answer yet (the fault outlasted the traffic): they show when answers flow again."""
    probes: list[Sent] = []
    if lane.fault_at is None:
        return probes
    deadline = time.monotonic() + PROBE_FOR_S
    while time.monotonic() < deadline and not good_answer_since(lane, sent + probes, lane.fault_at):
        n = len(probes)
        client_id = lane.client_ids[n % len(lane.client_ids)]
        # A conversation each, so the probes never wait behind one another.
        probes.append(lane.fleet.send(client_id, f"probe{n}", f"probe-{client_id}-{n:03d}"))
        time.sleep(1 / RATE_PER_S)
    return probes


class FaultThread(threading.Thread):
    """A fault pulled in the background; `result()` re-raises what went wrong pulling it."""

    def __init__(self, fault: Fault, lane: Lane) -> None:
        super().__init__(daemon=True, name="fault")
        self._fault = fault
        self._lane = lane
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._fault(self._lane)
        except BaseException as exc:  # handed to whoever joins
            self.error = exc

    def result(self) -> None:
        self.join()
        if self.error is not None:
            raise self.error


def run_together(scenarios: list[Scenario], data_dir: Path) -> list[Result]:
    """Run scenarios side by side on one fleet, each on channels of its own (a fault that hits
    a shared service, like a killed runner, hits the others too)."""
    first = scenarios[0]
    config = replace(
        first.fleet_config(),
        connectors=max(s.connectors for s in scenarios),
        routers=max(s.routers for s in scenarios),
        runners=max(s.runners for s in scenarios),
        channels=CHANNELS_PER_SCENARIO * len(scenarios),
        private_redis=any(s.private_redis for s in scenarios),
        extra_env={**FLEET_ENV, **{k: v for s in scenarios for k, v in s.env.items()}},
    )
    started = time.monotonic()
    with Fleet(config, data_dir) as fleet:
        lanes = [
            Lane(fleet, fleet.client_ids[i * CHANNELS_PER_SCENARIO : (i + 1) * CHANNELS_PER_SCENARIO])
            for i in range(len(scenarios))
        ]
        for scenario, lane in zip(scenarios, lanes, strict=True):
            if scenario.condition is not None:
                scenario.condition(lane)
        for lane in lanes:
            lane.driver = fleet.drive_in_background(
                MESSAGES, RATE_PER_S, CONVERSATIONS_PER_CHANNEL, client_ids=lane.client_ids
            )
        time.sleep(FAULT_AFTER_S)
        faults = [FaultThread(s.fault, lane) for s, lane in zip(scenarios, lanes, strict=True) if s.fault]
        for thread in faults:
            thread.start()
        sent = {s.name: lane.driver.result() for s, lane in zip(scenarios, lanes, strict=True) if lane.driver}
        for thread in faults:
            thread.result()
        for scenario, lane in zip(scenarios, lanes, strict=True):
            sent[scenario.name] += lane.extra
        probes = {s.name: probe(lane, sent[s.name]) for s, lane in zip(scenarios, lanes, strict=True)}
        for name, extra in probes.items():
            sent[name] += extra
        everything = [m for messages in sent.values() for m in messages]
        report = fleet.collect(
            everything, timeout_s=COLLECT_TIMEOUT_S, settle_s=3.0, close_window_s=CARD_CLOSE_WINDOW_S
        )
        took = time.monotonic() - started
        by_id = {o.sent.msg_id: o for o in report.outcomes}
        results = []
        for scenario, lane in zip(scenarios, lanes, strict=True):
            mine = Report([by_id[m.msg_id] for m in sent[scenario.name]])
            result = Result(scenario, mine, lane.fault_at, took)
            if probes[scenario.name]:
                result.notes.append(f"+{len(probes[scenario.name])} probe messages after the fault")
            if mine.failed and not scenario.failures_expected:
                result.notes.append(f"{len(mine.failed)} answered with a failure message")
            if mine.out_of_order:
                result.notes.append(f"{len(mine.out_of_order)} answered out of order")
            if open_cards := sum(o.open_cards for o in mine.outcomes):
                result.notes.append(f"{open_cards} cards left unfinished beside their answer")
            result.stuck = stuck_conversations(lane)
            result.notes.append(f"{result.stuck} stuck conversations")
            if scenario.check is not None:
                result.notes.extend(scenario.check(lane, mine))
            if not result.ok:
                result.notes.append(f"logs kept in {fleet.log_dir}")
            results.append(result)
        return results


def run_scenario(scenario: Scenario, data_dir: Path) -> Result:
    """One scenario on a fleet of its own."""
    [result] = run_together([scenario], data_dir)
    return result


def table(results: list[Result]) -> str:
    header = (
        f"{'scenario':<20} {'sent':>5} {'lost':>5} {'doubled':>8} {'failed':>7} {'recovered-in':>13}  notes"
    )
    rows = [header, "-" * len(header)]
    for r in results:
        recovered = f"{r.recovered_in:.1f} s" if r.recovered_in is not None else "-"
        rows.append(
            f"{r.scenario.name:<20} {len(r.report.outcomes):>5} {r.lost:>5} {r.doubled:>8} "
            f"{len(r.report.failed):>7} {recovered:>13}  {'; '.join(r.notes)}"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument(
        "--scenario", action="append", choices=sorted(BY_NAME), help="run this one (repeatable)"
    )
    parser.add_argument("--short", action="store_true", help="the CI subset, side by side on one fleet")
    parser.add_argument("--keep", action="store_true", help="keep the fleets' data and logs")
    parser.add_argument(
        "--outage-s", type=float, default=OUTAGE_S, help="how long platform-outage lasts (seconds)"
    )
    args = parser.parse_args(argv)
    OUTAGE["for_s"] = args.outage_s
    if args.list:
        for s in SCENARIOS:
            print(f"{s.name:<20} {'short' if s.short else 'slow ' if s.slow else '     '}  {s.about}")
        return 0
    base = Path(tempfile.mkdtemp(prefix="imgate-chaos-"))
    results: list[Result] = []
    if args.short:
        results = run_together([s for s in SCENARIOS if s.short], base / "short")
        for result in results:
            if result.problems():
                print(f"{result.scenario.name}:\n{result.problems()}", flush=True)
    else:
        for scenario in [BY_NAME[n] for n in args.scenario] if args.scenario else SCENARIOS:
            print(f"== {scenario.name}: {scenario.about}", flush=True)
            result = run_scenario(scenario, base / scenario.name)
            print(table([result]).splitlines()[-1], flush=True)
            if result.problems():
                print(result.problems(), flush=True)
            results.append(result)
    print()
    print(table(results))
    failed = [r for r in results if not r.ok]
    if not args.keep and not failed:
        shutil.rmtree(base, ignore_errors=True)
    elif failed:
        print(f"\nlogs: {base}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
