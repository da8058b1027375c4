"""The product as processes at chosen replica counts, for multi-replica tests, chaos runs and
benchmarks: real connector / router / agent-runner / admin-api processes on a private
nats-server, Redis under a key prefix of its own, SQLite or a fresh PostgreSQL database, imsim
as DingTalk (or Feishu: `FleetConfig(platform="feishu")`) and `tools.modelsim` as the model.

    with Fleet(FleetConfig(connectors=2, routers=2, runners=2, channels=10), data_dir) as fleet:
        sent = fleet.drive(200, rate_per_s=20, conversations_per_channel=4)
        report = fleet.collect(sent, timeout_s=60)  # collect_outcomes, cards known by id
        assert not report.lost and not report.doubled

What the user saw is read back from imsim only (cards with their update history, replies), with
imsim's wall-clock timestamps (the same clock as `Sent.sent_at`: imsim runs on this machine), so
`collect_outcomes` judges any bot talking to imsim, not just this one: answers are tied to
messages by the text they quote (modelsim quotes the user) and by imsim's conversation order.
"""

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
from cryptography.fernet import Fernet

from imgate_common.messages import run_id_for
from imgate_common.platforms import Platform
from imgate_connector.wording import WORDINGS
from tools.devstack import PYTHON, ROOT, LocalStack, http_ok, shared_bytecode_cache, wait_until
from tools.modelsim import ModelSim, free_port, serve_model

SHARED_REDIS = "redis://127.0.0.1:6379/0"
DINGTALK, FEISHU = Platform.DINGTALK.value, Platform.FEISHU.value  # the platforms a fleet can speak
SERVICE_OF = {
    "connector": "connector",
    "router": "router",
    "runner": "agent-runner",
    "agent-runner": "agent-runner",
}
READY_EVENT = {
    "admin-api": "admin_api_started",
    "connector": "connector_started",
    "router": "router_started",
    "agent-runner": "runner_started",
}
# Fast failover for tests: a dead runner's run comes back after 3 s (live runs say so every
# second), and connectors re-read the channels every 2 s. `extra_env` overrides any of these.
DEFAULT_ENV = {
    "CONNECTOR_RECONCILE_INTERVAL_S": "2",
    "RUNNER_ACK_WAIT_S": "3",
    "RUNNER_IN_PROGRESS_INTERVAL_S": "1",
    # Each replica serves /metrics on a free loopback port of its own (its log names the port).
    "IMGATE_METRICS_HOST": "127.0.0.1",
    "CONNECTOR_METRICS_PORT": "0",
    "ROUTER_METRICS_PORT": "0",
    "RUNNER_METRICS_PORT": "0",
    "PYTHONUNBUFFERED": "1",
}
START_TIMEOUT_S = 90.0
# What a card says when it ends pointing to its answer, sent as a plain message instead: the
# card is not a second copy of the answer.
POINTERS = frozenset(w.sent_below for w in WORDINGS.values())
# Card states DingTalk shows as done: finished, failed.
FINAL_FLOW = ("3", "5")


@dataclass
class FleetConfig:
    connectors: int = 1
    routers: int = 1
    runners: int = 1
    channels: int = 1  # imsim apps, one channel each, all on one agent
    database: str = "sqlite"  # or "postgres" (a fresh database on 127.0.0.1:5432, dropped after)
    card_latency_ms: int = 0  # imsim card-API latency
    card_qps_limit: int | None = None  # imsim per-app QPS limit
    model_ttft_ms: int = 150
    model_tokens_per_s: float = 40
    answer_tokens: int = 40
    extra_env: dict[str, str] = field(default_factory=dict)
    # A redis-server of the fleet's own on a free port (append-only file, so it survives a
    # restart) instead of the machine's Redis under a fresh key prefix.
    private_redis: bool = False
    platform: str = DINGTALK  # or FEISHU: imsim's Feishu apps, channels whose domain is imsim


@dataclass(frozen=True)
class Sent:
    client_id: str
    msg_id: str
    conversation_id: str
    text: str
    sent_at: float = field(default_factory=time.time)
    platform: str = DINGTALK  # whose sim API holds the chat


def _service_of(name: str) -> str:
    """`router-2` → `router`."""
    return name.rsplit("-", 1)[0]


def _ms(value: Any) -> float | None:
    return float(value) / 1000 if value is not None else None


class Fleet:
    """Started on `__enter__`, stopped (processes, database, Redis keys) on `__exit__`."""

    def __init__(self, config: FleetConfig, data_dir: Path, model: ModelSim | None = None) -> None:
        """`model`: serve this model in a thread of this process (a test that scripts answers or
        reads the requests); by default the model runs as a `tools.modelsim` process."""
        self.config = config
        self.scripted_model = model
        self.data_dir = Path(data_dir)
        self.log_dir = self.data_dir / "logs"
        self.stack = LocalStack(
            self.data_dir,
            quiet=True,
            log_dir=self.log_dir,
            bytecode_cache=shared_bytecode_cache(),
        )
        self.token = secrets.token_urlsafe(16)
        self.client_ids = [f"fleet-{i + 1}" for i in range(config.channels)]
        self.channel_ids: dict[str, int] = {}
        self.imsim = self.model = self.admin = ""
        self.nats_url = self.redis_url = self.database_url = ""
        self.redis_prefix = f"fleet-{uuid.uuid4().hex[:8]}"
        self._numbers: dict[str, int] = defaultdict(int)
        self._sent = 0
        self._lock = threading.Lock()  # several drivers may send at once
        self._exits = contextlib.ExitStack()
        # One client for all calls (threads included): a new one per call costs more CPU than
        # the call itself, which a steady send rate cannot afford.
        self.http = httpx.Client(timeout=10)
        self._exits.callback(self.http.close)

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> "Fleet":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        config = self.config
        self.data_dir.mkdir(parents=True, exist_ok=True)
        imsim_port, admin_port = free_port(), free_port()
        self.imsim = f"http://127.0.0.1:{imsim_port}"
        self.admin = f"http://127.0.0.1:{admin_port}"
        self.model = self._start_model()
        # A private nats-server keeps these streams away from other runs; its store survives
        # a restart on the same port.
        self.nats_url = self.stack.start_nats(f"nats://127.0.0.1:{free_port()}")
        if config.private_redis:
            self.redis_url = self.stack.start_redis(f"redis://127.0.0.1:{free_port()}/0", persist=True)
        else:
            self.redis_url = SHARED_REDIS
            self._exits.callback(self._forget_redis_keys)
        self.database_url = self._database()
        self.stack.env = {
            "IMGATE_DATA_DIR": str(self.data_dir),
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "IMGATE_REDIS_PREFIX": self.redis_prefix,
            "NATS_URL": self.nats_url,
            # One key for all: replicas must not race to create a key file each.
            "IMGATE_SECRET_KEYS": Fernet.generate_key().decode(),
            "ADMIN_TOKEN": self.token,
            "ADMIN_PORT": str(admin_port),
            "DINGTALK_OPENAPI_ENDPOINT": self.imsim,
            **DEFAULT_ENV,
            **config.extra_env,
        }
        prefix = "feishu:" if config.platform == FEISHU else ""
        apps = [f"{prefix}{c}:{c}-secret" for c in self.client_ids]
        imsim_argv = [PYTHON, "-m", "imsim", "--host", "127.0.0.1", "--port", str(imsim_port)]
        self.stack.spawn("imsim", [*imsim_argv, *(a for app in apps for a in ("--app", app))])
        subprocess.run(
            [PYTHON, "-m", "imgate_common.db.migrate"],
            cwd=ROOT,
            env={**os.environ, **self.stack.env},
            check=True,
            capture_output=True,
        )
        started = [self.start_replica("admin-api", wait=False)]
        started += [self.start_replica("router", wait=False) for _ in range(config.routers)]
        started += [self.start_replica("agent-runner", wait=False) for _ in range(config.runners)]
        self._wait_http(f"{self.imsim}/healthz", "imsim")
        self._wait_http(f"{self.model.removesuffix('/v1')}/sim/stats", "model")
        self._configure_imsim()
        self._wait_http(f"{self.admin}/healthz", started[0])
        if self.client_ids:
            # Made before any connector runs: their control requests find no responder at once
            # (instead of each waiting for an answer), and the connectors take them on start.
            self._create_channels()
        started += [self.start_replica("connector", wait=False) for _ in range(config.connectors)]
        for name in started:
            self.wait_ready(name)
        self.wait_connected()

    def _start_model(self) -> str:
        if self.scripted_model is not None:
            return self._exits.enter_context(serve_model(self.scripted_model))
        port = free_port()
        config = self.config
        knobs = {
            "--port": port,
            "--ttft-ms": config.model_ttft_ms,
            "--tokens-per-s": config.model_tokens_per_s,
            "--answer-tokens": config.answer_tokens,
        }
        self.stack.spawn(
            "model", [PYTHON, "-m", "tools.modelsim", *(str(v) for kv in knobs.items() for v in kv)]
        )
        return f"http://127.0.0.1:{port}/v1"

    def stop(self) -> None:
        # The services first, while the bus, Redis and imsim they drain through are still up.
        self.stack.stop(timeout=30, only=lambda name: _service_of(name) in READY_EVENT)
        self.stack.stop()
        self._exits.close()

    def restart_nats(self, down_s: float = 2.0) -> None:
        """Stop the fleet's nats-server, wait `down_s`, start it again on the same port and
        store (JetStream keeps its streams and consumers)."""
        self.stack.terminate("nats")
        time.sleep(down_s)
        self.stack.start_nats(self.nats_url)

    def restart_redis(self, down_s: float = 2.0) -> None:
        """Stop the fleet's own redis-server, wait `down_s`, start it again on the same port
        with its append-only file. Only with `private_redis` (never the machine's Redis)."""
        if not self.config.private_redis:
            raise RuntimeError("restart_redis needs FleetConfig(private_redis=True)")
        self.stack.terminate("redis")
        time.sleep(down_s)
        self.stack.start_redis(self.redis_url, persist=True)

    def black_hole_redis(self, for_s: float) -> None:
        """The fleet's own redis-server stops answering for `for_s`, then goes on as before:
        SIGSTOP, then SIGCONT. Its connections stay open and the kernel still accepts new ones,
        but nothing is answered and nothing is refused, as when a network drops the packets.
        Only with `private_redis` (never the machine's Redis)."""
        if not self.config.private_redis:
            raise RuntimeError("black_hole_redis needs FleetConfig(private_redis=True)")
        [redis] = [p.popen for p in self.stack.processes if p.name == "redis"]
        redis.send_signal(signal.SIGSTOP)
        try:
            time.sleep(for_s)
        finally:
            redis.send_signal(signal.SIGCONT)

    # -- replicas ---------------------------------------------------------------------------

    def start_replica(self, service: str, *, wait: bool = True) -> str:
        """Start one more replica of `service` with an instance id of its own; returns its name."""
        service = SERVICE_OF.get(service, service)
        self._numbers[service] += 1
        name = f"{service}-{self._numbers[service]}"
        self.stack.start_service(service, {"IMGATE_INSTANCE_ID": name}, replica=name)
        if wait:
            self.wait_ready(name)
        return name

    def wait_ready(self, name: str, timeout: float = START_TIMEOUT_S) -> None:
        service = _service_of(name)
        log = self.log_dir / f"{name}.log"

        def ready() -> bool:
            self._check_running(name)
            return log.exists() and READY_EVENT[service] in log.read_text(errors="replace")

        wait_until(ready, timeout, name)

    def replicas(self, service: str) -> list[str]:
        """Names of the running replicas of a service, e.g. ["router-1", "router-2"]."""
        service = SERVICE_OF.get(service, service)
        return [
            p.name for p in self.stack.processes if _service_of(p.name) == service and p.popen.poll() is None
        ]

    def terminate(self, name: str) -> int | None:
        """SIGTERM one replica and wait until it has drained and exited; returns its exit code
        (negative: it had to be killed after a minute)."""
        return self.stack.terminate(name, timeout=60)

    def kill(self, name: str) -> None:
        """SIGKILL one replica, as a crash would."""
        self.stack.kill(name)

    def pid(self, name: str) -> int:
        return next(p.popen.pid for p in self.stack.processes if p.name == name)

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-tail:]}"
            for p in sorted(self.log_dir.glob("*.log"))
        )

    def _check_running(self, name: str) -> None:
        for process in self.stack.processes:
            if process.name == name and process.popen.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.popen.returncode}\n{self.logs()}")

    # -- channels ---------------------------------------------------------------------------

    def admin_api(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.admin, headers={"Authorization": f"Bearer {self.token}"}, timeout=10
        )

    def _create_channels(self) -> None:
        with self.admin_api() as api:
            agent = api.post(
                "/api/v1/agents",
                json={"name": "modelsim", "provider": "openai", "model": "modelsim", "base_url": self.model},
            )
            agent.raise_for_status()
            channel: dict[str, Any] = {
                "platform": self.config.platform,
                "default_agent_id": agent.json()["id"],
            }
            # A channel's card_qps (the admin API stores 20 unless told) overrides the connector's
            # CONNECTOR_CARD_QPS: a budget given to the fleet goes to its channels too.
            if budget := self.config.extra_env.get("CONNECTOR_CARD_QPS"):
                channel["card_qps"] = round(float(budget))
            for client_id in self.client_ids:
                response = api.post(
                    "/api/v1/channels",
                    json={
                        **channel,
                        "name": client_id,
                        "config": self._channel_config(client_id),
                        "enabled": True,
                    },
                )
                response.raise_for_status()
                self.channel_ids[client_id] = int(response.json()["id"])

    def _channel_config(self, client_id: str) -> dict[str, Any]:
        secret = f"{client_id}-secret"
        if self.config.platform == FEISHU:
            return {"app_id": client_id, "app_secret": secret, "domain": self.imsim}
        return {"client_id": client_id, "client_secret": secret}

    def app_path(self, client_id: str) -> str:
        """The app's place in imsim's /sim API."""
        app = quote(client_id, safe="")
        return f"/feishu/apps/{app}" if self.config.platform == FEISHU else f"/apps/{app}"

    def _configure_imsim(self) -> None:
        # Feishu names DingTalk's card latency and QPS limit after its whole API.
        latency, qps = ("api", "api") if self.config.platform == FEISHU else ("card", "card")
        faults: dict[str, Any] = {}
        if self.config.card_latency_ms:
            faults[f"{latency}_latency_ms"] = self.config.card_latency_ms
        if self.config.card_qps_limit is not None:
            faults[f"{qps}_qps_limit"] = self.config.card_qps_limit
        if faults:
            for client_id in self.client_ids:
                self.sim("PATCH", f"{self.app_path(client_id)}/faults/config", faults)

    def sim(self, method: str, path: str, body: Any = None) -> Any:
        """Call imsim's /sim API (e.g. `fleet.sim("PATCH", "/apps/fleet-1/faults/config", {...})`)."""
        response = self.http.request(method, f"{self.imsim}/sim{path}", json=body)
        response.raise_for_status()
        return response.json()

    def model_sim(self, method: str, path: str, body: Any = None) -> Any:
        """Call the model server's /sim API (e.g. `fleet.model_sim("POST", "/fail", {...})`)."""
        response = self.http.request(method, f"{self.model.removesuffix('/v1')}/sim{path}", json=body)
        response.raise_for_status()
        return response.json()

    def connections(self, client_id: str) -> list[dict[str, Any]]:
        """The app's open Stream connections as imsim sees them."""
        return [c for c in self.sim("GET", f"{self.app_path(client_id)}/connections") if c["open"]]

    def owners(self) -> dict[str, str | None]:
        """Which connector replica each channel's status names as its owner."""
        with self.admin_api() as api:
            return {
                client_id: api.get(f"/api/v1/channels/{channel_id}/status").json().get("owner")
                for client_id, channel_id in self.channel_ids.items()
            }

    def wait_connected(self, timeout: float = 60.0) -> None:
        """Until every channel has exactly one open connection and a connected status."""

        def settled() -> bool:
            if any(len(self.connections(c)) != 1 for c in self.client_ids):
                return False
            with self.admin_api() as api:
                states = [api.get(f"/api/v1/channels/{c}/status").json() for c in self.channel_ids.values()]
            return all(s["state"] == "connected" for s in states)

        wait_until(settled, timeout, "every channel connected once")

    # -- traffic ----------------------------------------------------------------------------

    def send(self, client_id: str, conversation_id: str, text: str) -> Sent:
        """The user `conversation_id` (a staff id: one 1:1 chat per user and app) sends `text`.
        The returned `Sent` carries imsim's conversation id."""
        sent_at = time.time()
        url = f"{self.imsim}/sim{self.app_path(client_id)}/messages"
        if self.config.platform == FEISHU:
            user = {"sender_id": conversation_id, "sender_name": conversation_id}
            response = self.http.post(url, json={"text": text, **user})
            response.raise_for_status()
            body = response.json()
            return Sent(client_id, body["message_id"], body["chat_id"], text, sent_at, FEISHU)
        user = {"sender_staff_id": conversation_id, "sender_nick": conversation_id}
        response = self.http.post(url, json={"text": text, **user})
        response.raise_for_status()
        body = response.json()
        return Sent(client_id, body["msg_id"], body["conversation_id"], text, sent_at)

    def drive(
        self,
        count: int,
        rate_per_s: float,
        conversations_per_channel: int = 1,
        *,
        into: list[Sent] | None = None,
        client_ids: list[str] | None = None,
    ) -> list[Sent]:
        """Send `count` messages at a steady rate, round-robin over the channels (all, or
        `client_ids`) and, within a channel, over `conversations_per_channel` users. Each text
        is unique in this fleet. `into` receives each message as it goes out."""
        sent: list[Sent] = into if into is not None else []
        channels = client_ids or self.client_ids
        started = time.monotonic()
        for k in range(count):
            time.sleep(max(0.0, started + k / rate_per_s - time.monotonic()))
            user = (k // len(channels)) % conversations_per_channel
            with self._lock:
                self._sent += 1
                text = f"q{self._sent:05d}"
            sent.append(self.send(channels[k % len(channels)], f"user{user + 1}", text))
        return sent

    def drive_in_background(
        self,
        count: int,
        rate_per_s: float,
        conversations_per_channel: int = 1,
        client_ids: list[str] | None = None,
    ) -> "Driver":
        """`drive` in a thread, so faults can be pulled while messages go out."""
        driver = Driver(self, count, rate_per_s, conversations_per_channel, client_ids)
        driver.start()
        return driver

    def card_ids(self, sent: list[Sent]) -> dict[str, str]:
        """Card id → msg id for `sent`: imgate names a message's card after its run (on DingTalk;
        a Feishu card's id is Feishu's own)."""
        return {
            run_id_for(DINGTALK, self.channel_ids[s.client_id], s.msg_id): s.msg_id
            for s in sent
            if s.client_id in self.channel_ids and s.platform == DINGTALK
        }

    def collect(
        self, sent: list[Sent], timeout_s: float = 120.0, settle_s: float = 2.0, close_window_s: float = 0.0
    ) -> "Report":
        """`collect_outcomes` for this fleet's messages, each card tied to its message by id."""
        return collect_outcomes(
            self.imsim, sent, timeout_s, settle_s, cards=self.card_ids(sent), close_window_s=close_window_s
        )

    def read(self, sent: list[Sent]) -> "Report":
        """`read_outcomes` right now, each card tied to its message by id."""
        return read_outcomes(self.imsim, sent, self.http, cards=self.card_ids(sent))

    # -- resources --------------------------------------------------------------------------

    def _database(self) -> str:
        if self.config.database == "sqlite":
            return f"sqlite+aiosqlite:///{self.data_dir}/fleet.db"
        if self.config.database == "postgres":
            from tests.support.databases import postgres_database  # asyncpg: a dev dependency

            return self._exits.enter_context(postgres_database())
        raise ValueError(f"unknown database {self.config.database!r}: sqlite or postgres")

    def _forget_redis_keys(self) -> None:
        from redis import Redis

        with contextlib.suppress(Exception), Redis.from_url(self.redis_url) as redis:
            keys = list(redis.scan_iter(f"{self.redis_prefix}:*", count=1000))
            for start in range(0, len(keys), 500):
                redis.delete(*keys[start : start + 500])

    def _wait_http(self, url: str, what: str) -> None:
        def up() -> bool:
            self._check_running(what)
            return http_ok(url)

        wait_until(up, START_TIMEOUT_S, what)


class Driver(threading.Thread):
    """Messages going out in the background; `join()` then read `sent`."""

    def __init__(
        self,
        fleet: Fleet,
        count: int,
        rate_per_s: float,
        conversations: int,
        client_ids: list[str] | None = None,
    ) -> None:
        super().__init__(daemon=True, name="fleet-driver")
        self._fleet = fleet
        self._args = (count, rate_per_s, conversations)
        self._client_ids = client_ids
        self.sent: list[Sent] = []
        self.error: BaseException | None = None
        self.started_at = time.time()

    def run(self) -> None:
        self.started_at = time.time()
        try:
            self._fleet.drive(*self._args, into=self.sent, client_ids=self._client_ids)
        except BaseException as exc:  # handed to whoever joins
            self.error = exc

    def so_far(self) -> list[Sent]:
        """The messages sent until now (a copy)."""
        return list(self.sent)

    def result(self) -> list[Sent]:
        """Wait until every message went out; all of them."""
        self.join()
        if self.error is not None:
            raise self.error
        return self.sent


# -- what the users saw ------------------------------------------------------------------------


@dataclass
class Outcome:
    sent: Sent
    answers: int = 0  # final answers the user sees (finished or failed cards, plain replies)
    thinking_at: float | None = None  # the answering card appeared (epoch seconds, imsim's clock)
    first_text_at: float | None = None  # the first answer text showed
    final_at: float | None = None  # the (first) final answer
    final_text: str | None = None
    failed: bool = False  # the final answer is a failure (card failed / isError)
    open_cards: int = 0  # cards for it that never finished

    @property
    def latency_s(self) -> float | None:
        return self.final_at - self.sent.sent_at if self.final_at is not None else None


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 3)


@dataclass
class Report:
    outcomes: list[Outcome]

    @property
    def lost(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.answers == 0]

    @property
    def doubled(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.answers > 1]

    @property
    def out_of_order(self) -> list[Outcome]:
        """Answers that came before the answer of a message sent earlier in their conversation."""
        late: list[Outcome] = []
        by_conversation: dict[tuple[str, str], list[Outcome]] = defaultdict(list)
        for outcome in self.outcomes:
            by_conversation[(outcome.sent.client_id, outcome.sent.conversation_id)].append(outcome)
        for outcomes in by_conversation.values():
            latest = 0.0
            for outcome in sorted(outcomes, key=lambda o: o.sent.sent_at):
                if outcome.final_at is None:
                    continue
                if outcome.final_at < latest:
                    late.append(outcome)
                latest = max(latest, outcome.final_at)
        return late

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.failed]

    def answered_after(self, at: float) -> float | None:
        """When the first answer to a message sent after `at` (epoch seconds) arrived."""
        finals = [o.final_at for o in self.outcomes if o.sent.sent_at >= at and o.final_at is not None]
        return min(finals) if finals else None

    def summary(self) -> dict[str, Any]:
        def latencies(pick: str) -> list[float]:
            values = [getattr(o, pick) for o in self.outcomes]
            return [v - o.sent.sent_at for v, o in zip(values, self.outcomes, strict=True) if v is not None]

        summary: dict[str, Any] = {
            "sent": len(self.outcomes),
            "answered": sum(1 for o in self.outcomes if o.answers),
            "lost": len(self.lost),
            "doubled": len(self.doubled),
            "out_of_order": len(self.out_of_order),
            "failed": len(self.failed),
            "open_cards": sum(o.open_cards for o in self.outcomes),
        }
        for pick in ("thinking_at", "first_text_at", "final_at"):
            values = latencies(pick)
            name = pick.removesuffix("_at")
            summary[f"{name}_p50_s"] = _percentile(values, 0.5)
            summary[f"{name}_p95_s"] = _percentile(values, 0.95)
        return summary

    def describe(self, outcomes: list[Outcome]) -> str:
        return "\n".join(
            f"{o.sent.client_id} {o.sent.conversation_id} {o.sent.text!r} msg={o.sent.msg_id} "
            f"answers={o.answers} open_cards={o.open_cards} final={o.final_text!r}"
            for o in outcomes
        )


def _feishu_card_times(card: dict[str, Any]) -> tuple[float | None, float | None, float | None]:
    """(visible: the reply carrying it was sent, first text, final: streaming turned off) of a
    Feishu card. Unlike DingTalk's, its history does not tell a queued line from answer text:
    both are content updates."""
    created = first_text = final = None
    for update in card.get("updates", []):
        at = _ms(update["at"])
        if update["op"] == "create" and created is None:
            created = at
        if update["op"] in ("content", "update") and update["len"] and first_text is None:
            first_text = at
        if not update["streaming"] and final is None:  # a card posted final is final when made
            final = at
    sent = card.get("at")
    return (_ms(sent) if sent is not None else created), first_text, final


def _card_times(card: dict[str, Any]) -> tuple[float | None, float | None, float | None]:
    """(created, first answer text, final) of a card, from its update history."""
    if "streaming_mode" in card:
        return _feishu_card_times(card)
    created = delivered = first_text = final = None
    for update in card.get("updates", []):
        at = _ms(update["at"])
        if update["op"] == "create" and created is None:
            created = at
        if update["op"] == "deliver" and delivered is None:
            delivered = at
        # Streaming ops carry answer text; so does the card-params update that switches the card
        # to "inputing" (flowStatus 2) with the first text. The queued line stays "processing".
        shows_text = update["op"] in ("full", "append") or (
            update["op"] == "update" and update["flow_status"] == "2"
        )
        if shows_text and update["len"] and first_text is None:
            first_text = at
        ends = update["finalize"] or update["error"] or update["flow_status"] in FINAL_FLOW
        if ends and final is None and update["op"] != "create":
            final = at
    if final is None and (card.get("finalized") or card.get("flow_status") in FINAL_FLOW):
        final = _ms(card.get("at"))
    # The user sees a card once it is delivered (the SDK's create + deliver are two calls).
    return delivered or created, first_text, final


def _target(
    item: dict[str, Any], answer_text: str, sent: dict[str, Sent], cards: Mapping[str, str] | None
) -> str | None:
    """The message an answer belongs to: the one its card is named after (when the bot's card
    ids are known), else the one whose text it quotes (the longest, if several), else the one
    imsim tied it to by the conversation's order."""
    card_id = str(item.get("out_track_id"))
    if cards is not None and card_id in cards:
        return cards[card_id]
    quoted = [s for s in sent.values() if s.text and s.text in answer_text]
    if quoted:
        return max(quoted, key=lambda s: len(s.text)).msg_id
    reply_to = item.get("reply_to")
    return reply_to if reply_to in sent else None


def _continuation(item: dict[str, Any], cards: Mapping[str, str] | None) -> bool:
    """A further card of a long answer (`<card id>-2`, …): part of that answer, not another."""
    base, dash, number = str(item.get("out_track_id", "")).rpartition("-")
    return cards is not None and bool(dash) and number.isdigit() and base in cards


def read_outcomes(
    imsim_url: str,
    sent: list[Sent],
    http: httpx.Client | None = None,
    cards: Mapping[str, str] | None = None,
) -> Report:
    """What the users of `sent` see right now: DingTalk's conversations app by app, another
    platform's (`Sent.platform`) chats one by one. `cards` (card id → msg id) names the card of each
    message when the bot's naming is known (`Fleet.card_ids`); without it, answers are tied to
    messages by the text they quote and by imsim's order."""
    outcomes = {s.msg_id: Outcome(s) for s in sent}
    by_conversation: dict[tuple[str, str], dict[str, Sent]] = defaultdict(dict)
    for s in sent:
        by_conversation[(s.client_id, s.conversation_id)][s.msg_id] = s
    client = http or httpx.Client(timeout=30)
    try:
        for (client_id, platform), chats in _feishu_chats(sent).items():
            for chat_id in sorted(chats):
                path = f"/sim/{platform}/apps/{quote(client_id, safe='')}/chats/{quote(chat_id, safe='')}"
                response = client.get(f"{imsim_url}{path}")
                response.raise_for_status()
                _attribute(response.json()["items"], by_conversation[(client_id, chat_id)], outcomes, cards)
        for client_id in sorted({s.client_id for s in sent if s.platform == DINGTALK}):
            response = client.get(f"{imsim_url}/sim/apps/{quote(client_id, safe='')}/conversations")
            response.raise_for_status()
            for conversation in response.json():
                mine = by_conversation.get((client_id, conversation["conversation_id"]))
                if mine:
                    _attribute(conversation["items"], mine, outcomes, cards)
    finally:
        if http is None:
            client.close()
    return Report([outcomes[s.msg_id] for s in sent])


def _feishu_chats(sent: list[Sent]) -> dict[tuple[str, str], set[str]]:
    """The Feishu chats of `sent` by (app, platform): imsim lists a Feishu app's chats without
    their items, so each is read on its own."""
    chats: dict[tuple[str, str], set[str]] = defaultdict(set)
    for s in sent:
        if s.platform == FEISHU:
            chats[(s.client_id, s.platform)].add(s.conversation_id)
    return chats


def _attribute(
    items: list[dict[str, Any]],
    mine: dict[str, Sent],
    outcomes: dict[str, Outcome],
    cards: Mapping[str, str] | None,
) -> None:
    for item in sorted((i for i in items if i["kind"] != "user"), key=lambda i: i["at"]):
        is_card = item["kind"] == "card"
        text = item.get("content", "") if is_card else item.get("text", "")
        target = _target(item, text or "", mine, cards)
        if target is None or target not in outcomes or (is_card and _continuation(item, cards)):
            continue
        if is_card and text in POINTERS:
            continue
        outcome = outcomes[target]
        if is_card:
            created, first_text, final = _card_times(item)
            failed = bool(item.get("error")) or item.get("flow_status") == "5"
        else:
            created, first_text, final = None, _ms(item["at"]), _ms(item["at"])
            failed = False
        if final is None:
            outcome.open_cards += 1
            if outcome.answers == 0:  # still on its way: what the user sees of it so far
                outcome.thinking_at = outcome.thinking_at or created
                outcome.first_text_at = outcome.first_text_at or first_text
            continue
        outcome.answers += 1
        if outcome.answers == 1:
            outcome.thinking_at = created if created is not None else outcome.thinking_at
            outcome.first_text_at = first_text or final
            outcome.final_at = final
            outcome.final_text = text
            outcome.failed = failed


def collect_outcomes(
    imsim_url: str,
    sent: list[Sent],
    timeout_s: float = 120.0,
    settle_s: float = 2.0,
    cards: Mapping[str, str] | None = None,
    close_window_s: float = 0.0,
) -> Report:
    """Wait until every message in `sent` has a final answer (or `timeout_s` passed), then
    `settle_s` more for any answer that should not come (a second one), and report. With
    `close_window_s`, a card left open beside its answer (the answer went out as plain text
    while card calls failed) gets that long to be closed, once the platform is back."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=30) as http:
        while True:
            report = read_outcomes(imsim_url, sent, http, cards)
            if not report.lost or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        if settle_s > 0:
            time.sleep(settle_s)
            report = read_outcomes(imsim_url, sent, http, cards)
        closing_until = time.monotonic() + close_window_s
        while any(o.open_cards for o in report.outcomes) and time.monotonic() < closing_until:
            time.sleep(1.0)
            report = read_outcomes(imsim_url, sent, http, cards)
    return report


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, default=str)
    print()


def main() -> int:
    """A quick look: a fleet, 20 messages, the summary."""
    with tempfile.TemporaryDirectory(prefix="fleet-") as tmp, Fleet(FleetConfig(), Path(tmp)) as fleet:
        sent = fleet.drive(20, rate_per_s=5, conversations_per_channel=5)
        _print_json(collect_outcomes(fleet.imsim, sent, timeout_s=60).summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
