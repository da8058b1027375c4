"""End-to-end figures: the product as processes (tools/fleet.py) against imsim and modelsim,
beside the SDK-style baseline bot (baseline_bot.py) on the same imsim and the same model server.

The runs, the first four on one fleet (PostgreSQL), the last on a fleet of its own:

- memory: every channel connected and idle, connector RSS against the baseline process's.
- latency: one channel (one DingTalk app) with a card QPS limit; messages at each rate in turn
  to imgate, then to the baseline updating the card on every chunk, then to the baseline
  updating it every 0.8 s (each baseline on an app of its own with the same faults): thinking /
  first text / final visible, card calls per reply and per second, 403/429, complete / lost /
  doubled per rate. Then imgate once more at the first rate from users it has never seen (first
  contact: each one is created on the way).
- Feishu latency: imgate on one Feishu app (imsim's URL as the channel's domain, imsim's default
  Feishu limits, the card latency on every API call) at each of `feishu_rates`, judged like the
  latency run; no Feishu SDK-pattern bot: its rows stand beside imgate's DingTalk ones.
- cost: `cost_channels` channels, no card limit, a quick model; at each of `cost_rates` the
  SDK-pattern bots (one process per channel, as each team would run the SDK's example) and then
  imgate: answers within `cost_collect_s` of the last message, answers/s while sending, final
  latency, and CPU per answer from /proc (every bot process, user + system). imgate once more at
  the highest rate with a second router and a second runner started.
- SQLite: imgate's cost phases again on a fleet with `make run`'s embedded SQLite database,
  and how often its log says "database is locked".

What users saw is read back from imsim with `collect_outcomes`/`read_outcomes`, so both bots are
judged alike.
"""

import contextlib
import math
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from measure import CpuMeter, percentile, process_tree, rss_mb  # noqa: E402
from report import Figure  # noqa: E402

from tools.devstack import PYTHON, wait_until  # noqa: E402
from tools.fleet import Fleet, FleetConfig, Report, Sent, collect_outcomes, read_outcomes  # noqa: E402

BASELINE_BOT = Path(__file__).resolve().parent / "baseline_bot.py"
IMGATE, CHUNK, INTERVAL = "imgate", "baseline", "baseline_interval"
DINGTALK, FEISHU = "dingtalk", "feishu"
FEISHU_APP = "cli_bench"  # the Feishu latency phase's app on imsim
# Baselines first: each runs in a fresh process that is stopped after its phase, so nothing it
# left undone carries over; imgate's unfinished work (if any) can only spill into what follows.
TARGETS = (CHUNK, INTERVAL, IMGATE)


@dataclass
class Params:
    """Every knob of the suite; the JSON records them beside the figures."""

    card_latency_ms: int = 20
    card_qps_limit: int = 40
    model_ttft_ms: int = 150
    model_tokens_per_s: float = 40.0
    answer_tokens: int = 40
    baseline_update_every_s: float = 0.8
    baseline_workers: int = 8  # AsyncChatbotHandler's default thread pool
    # latency run: messages/s, and seconds of sending at each rate (at least min_messages)
    rates: list[float] = field(default_factory=lambda: [2.0, 10.0, 30.0])
    seconds_per_rate: float = 15.0
    min_messages: int = 30
    # users per channel = rate × this: each user writes again only after this many seconds,
    # so per-conversation queueing (one run at a time) stays out of the latency figures
    user_gap_s: float = 5.0
    # Feishu: imgate on one Feishu app (imsim's default Feishu limits), these rates; empty: off
    feishu_rates: list[float] = field(default_factory=lambda: [2.0, 10.0])
    # first contact: imgate at the first rate, every message from a user it has never seen
    first_contact_messages: int = 30
    # cost run: no card limit, a quick model, one SDK-pattern bot process per channel
    cost_channels: int = 10
    cost_rates: list[float] = field(default_factory=lambda: [20.0, 60.0])
    cost_seconds: float = 20.0
    cost_users_per_channel: int = 40
    cost_card_latency_ms: int = 5
    cost_model_ttft_ms: int = 50
    cost_model_tokens_per_s: float = 400.0
    cost_answer_tokens: int = 21
    cost_baseline_workers: int = 16
    cost_collect_s: float = 30.0  # an answer later than this after the last message is not counted
    cost_two_replicas: bool = True  # the highest rate again with two routers and two runners
    cost_sqlite: bool = True  # imgate's cost phases again on make run's SQLite
    # memory run
    memory_channels: int = 100
    # the product
    connectors: int = 1
    routers: int = 1
    runners: int = 1
    # PostgreSQL as in production; with SQLite, concurrent writers from several processes
    # meet "database is locked" and messages come back seconds later (see docs/performance.md).
    database: str = "postgres"
    # Runs in flight per runner. The shipped default (8) is sized for the local llama.cpp model,
    # which generates one answer at a time; a hosted model answers many at once.
    runner_concurrency: int = 64
    # The connector's card budget per app, set to the platform's limit as an operator would
    # (the shipped default is 20 QPS); null leaves the product default.
    card_qps_budget: float | None = None
    collect_grace_s: float = 20.0  # a reply not seen this long after the last message counts as lost
    settle_s: float = 2.0  # after the last answer, how long to watch for a second one

    @classmethod
    def smoke(cls) -> "Params":
        return cls(
            rates=[2.0],
            feishu_rates=[2.0],
            seconds_per_rate=3.0,
            min_messages=8,
            answer_tokens=12,
            first_contact_messages=4,
            cost_channels=2,
            cost_rates=[10.0],
            cost_seconds=2.0,
            cost_users_per_channel=4,
            cost_collect_s=10.0,
            memory_channels=4,
            collect_grace_s=5.0,
            settle_s=0.5,
        )

    def model_ms(self) -> float:
        """How long the model takes for a whole answer in the latency run."""
        return self.model_ttft_ms + 1000 * self.answer_tokens / self.model_tokens_per_s

    def cost_model_ms(self) -> float:
        return self.cost_model_ttft_ms + 1000 * self.cost_answer_tokens / self.cost_model_tokens_per_s

    def imgate_env(self, budget: float | None) -> dict[str, str]:
        env = {"RUNNER_MAX_CONCURRENT_RUNS": str(self.runner_concurrency)}
        if budget is not None:
            env["CONNECTOR_CARD_QPS"] = str(budget)
        return env


# -- traffic ------------------------------------------------------------------------------------


class Sender:
    """Plays the users over imsim's /sim API. Open loop: messages leave on schedule from a pool
    of threads, each with its own kept-alive client, so a slow answer from imsim (it pushes the
    frame to the bot before answering) does not slow the offered load down."""

    def __init__(self, imsim: str, threads: int = 64) -> None:
        self.imsim = imsim
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sender")
        self._count = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for client in self._clients:
            client.close()

    def _http(self) -> httpx.Client:
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = httpx.Client(timeout=30)
            with self._lock:
                self._clients.append(client)
        return client

    def send(self, client_id: str, user: str, prefix: str, platform: str = DINGTALK) -> Sent:
        with self._lock:
            self._count += 1
            text = f"{prefix}{self._count:06d}"
        http = self._http()
        sent_at = time.time()
        if platform == DINGTALK:
            response = http.post(
                f"{self.imsim}/sim/apps/{client_id}/messages",
                json={"text": text, "sender_staff_id": user, "sender_nick": user},
            )
        else:  # the sim API every platform shares
            response = http.post(
                f"{self.imsim}/sim/platforms/{platform}/apps/{client_id}/messages",
                json={"text": text, "sender_id": user, "sender_name": user},
            )
        response.raise_for_status()
        body = response.json()
        chat = body["conversation_id"] if platform == DINGTALK else body["chat_id"]
        return Sent(client_id, body["msg_id"], chat, text, sent_at, platform)

    def drive(
        self,
        apps: list[str],
        count: int,
        rate: float,
        users: int,
        prefix: str,
        user: str = "user",
        platform: str = DINGTALK,
    ) -> list[Sent]:
        """`count` messages at `rate`/s, round-robin over the apps and, per app, over `users`
        (named `<user>1`, `<user>2`, …)."""
        futures: list[Future[Sent]] = []
        started = time.monotonic()
        for k in range(count):
            time.sleep(max(0.0, started + k / rate - time.monotonic()))
            n = (k // len(apps)) % users
            futures.append(
                self._pool.submit(self.send, apps[k % len(apps)], f"{user}{n + 1}", prefix, platform)
            )
        return sorted((f.result() for f in futures), key=lambda s: s.sent_at)


def card_counters(imsim: str, apps: list[str]) -> dict[str, int]:
    """Card API calls (every /v1.0/card/ route) and 403 / 429 refusals, summed over the apps."""
    total = {"card_calls": 0, "throttled_403": 0, "throttled_429": 0}
    with httpx.Client(timeout=10) as http:
        for app in apps:
            counters = http.get(f"{imsim}/sim/apps/{app}/counters").json()
            routes = counters["api_calls"]["by_route"]
            total["card_calls"] += sum(n for route, n in routes.items() if "/v1.0/card/" in route)
            total["throttled_403"] += int(counters["throttled"].get("403", 0))
            total["throttled_429"] += int(counters["throttled"].get("429", 0))
    return total


def feishu_counters(imsim: str, app: str) -> dict[str, int]:
    """The same for a Feishu app: CardKit calls, 429s, and calls answered with another error
    status. A reply refused by a chat's send rate (code 230020, HTTP 200) is not in imsim's
    counters: it shows only as an answer late or lost."""
    counters = httpx.get(f"{imsim}/sim/platforms/{FEISHU}/apps/{app}/counters", timeout=10).json()
    calls = counters["api_calls"]
    statuses = {int(status): n for status, n in calls["by_status"].items()}
    return {
        "card_calls": sum(n for route, n in calls["by_route"].items() if "/cardkit/" in route),
        "throttled_403": 0,
        "throttled_429": statuses.get(429, 0),
        "refused_other": sum(n for status, n in statuses.items() if status >= 400 and status != 429),
    }


def _minus(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after}


def wait_model_idle(fleet: Fleet, within_s: float = 60.0, quiet_s: float = 1.0) -> None:
    """Until the model server has no stream open (what is still running would spoil the next
    phase's counters and CPU); gives up quietly after `within_s`."""
    stats_url = f"{fleet.model.removesuffix('/v1')}/sim/stats"
    deadline = time.monotonic() + within_s
    quiet_since: float | None = None
    while time.monotonic() < deadline:
        if httpx.get(stats_url, timeout=5).json()["in_flight"] == 0:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= quiet_s:
                return
        else:
            quiet_since = None
        time.sleep(0.2)


# -- the baseline as a process ------------------------------------------------------------------


class BaselineBot:
    """baseline_bot.py on apps of its own on the fleet's imsim, with the fleet's card faults,
    calling the fleet's model server. Started by `start()`, stopped by `stop()` (and with the
    fleet in any case)."""

    def __init__(self, fleet: Fleet, name: str, apps: list[str], update_every: float, workers: int) -> None:
        self.fleet, self.name, self.apps = fleet, name, apps
        self.update_every, self.workers = update_every, workers
        self.pid = 0
        self._registered = False

    def _register(self, faults: dict[str, Any]) -> None:
        with httpx.Client(timeout=10) as http:
            for app in self.apps:
                http.post(
                    f"{self.fleet.imsim}/sim/apps", json={"client_id": app, "client_secret": f"{app}-secret"}
                ).raise_for_status()
                if faults:
                    http.patch(
                        f"{self.fleet.imsim}/sim/apps/{app}/faults/config", json=faults
                    ).raise_for_status()
        self._registered = True

    def start(self, faults: dict[str, Any]) -> "BaselineBot":
        if not self._registered:
            self._register(faults)
        argv = [PYTHON, str(BASELINE_BOT), "--endpoint", self.fleet.imsim, "--model-url", self.fleet.model]
        argv += ["--update-every", str(self.update_every), "--workers", str(self.workers)]
        for app in self.apps:
            argv += ["--app", f"{app}:{app}-secret"]
        process = self.fleet.stack.spawn(self.name, argv)
        self.pid = process.popen.pid
        wanted = set(self.apps)

        def connected() -> bool:
            if process.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {process.popen.returncode}")
            listed = httpx.get(f"{self.fleet.imsim}/sim/apps", timeout=10).json()
            return sum(1 for a in listed if a["client_id"] in wanted and a["connections"] == 1) == len(wanted)

        wait_until(connected, 120, f"{self.name}: {len(self.apps)} apps connected")
        return self

    def stop(self) -> None:
        self.fleet.stack.terminate(self.name, timeout=10)
        self.pid = 0


# -- one phase: messages to one bot, what the users saw -----------------------------------------


@dataclass
class Phase:
    target: str
    rate: float
    sent: int
    answered: int
    complete: int
    lost: int
    doubled: int
    failed: int
    thinking_ms: list[float]
    first_text_ms: list[float]
    final_ms: list[float]
    card_calls: int
    throttled_403: int
    throttled_429: int
    send_s: float
    refused_other: int = 0  # Feishu: calls answered with an error status other than 429
    answer_s: float = 0.0  # from the first message sent until the last final answer seen
    # What went wrong, message by message (doubled first, then a few lost), for the post-mortem.
    examples: list[str] = field(default_factory=list)

    @property
    def card_calls_per_s(self) -> float:
        """Card calls per second while the phase's answers were being given."""
        return self.card_calls / self.answer_s if self.answer_s > 0 else math.nan

    @property
    def calls_per_reply(self) -> float:
        """Card calls per message sent: a reply that never finished still spent its calls."""
        return self.card_calls / self.sent if self.sent else math.nan

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("thinking_ms", "first_text_ms", "final_ms"):
            values = data.pop(key)
            data[key] = {
                "p50": _r(percentile(values, 0.5)),
                "p99": _r(percentile(values, 0.99)),
                "n": len(values),
            }
        data["calls_per_reply"] = _r(self.calls_per_reply)
        return data


def _r(value: float) -> float | None:
    return None if not math.isfinite(value) else round(value, 2)


def judge(
    target: str, rate: float, sent: list[Sent], report: Report, tokens: int, counters: dict[str, int]
) -> Phase:
    last_word = f"t{tokens - 1}"

    def ms(pick: str) -> list[float]:
        out = []
        for outcome in report.outcomes:
            at = getattr(outcome, pick)  # a card seen thinking counts even if it never finished
            if at is not None:
                out.append((at - outcome.sent.sent_at) * 1000)
        return out

    complete = sum(
        1
        for o in report.outcomes
        if o.answers == 1 and not o.failed and o.final_text and o.final_text.rstrip().endswith(last_word)
    )
    return Phase(
        target=target,
        rate=rate,
        sent=len(sent),
        answered=sum(1 for o in report.outcomes if o.answers),
        complete=complete,
        lost=len(report.lost),
        doubled=len(report.doubled),
        failed=len(report.failed),
        thinking_ms=ms("thinking_at"),
        first_text_ms=ms("first_text_at"),
        final_ms=ms("final_at"),
        send_s=(sent[-1].sent_at - sent[0].sent_at) if len(sent) > 1 else 0.0,
        answer_s=max((o.final_at for o in report.outcomes if o.final_at is not None), default=sent[0].sent_at)
        - sent[0].sent_at,
        examples=report.describe(report.doubled + report.lost[:5]).splitlines(),
        **counters,
    )


SERVICE_NAMES = ("connector", "router", "agent-runner", "admin-api")
HARNESS_NAMES = ("imsim", "model", "nats")
PREFIX = {IMGATE: "i", CHUNK: "c", INTERVAL: "v"}  # message texts: i000001, c000002, …


def _roots(fleet: Fleet, name: str) -> list[int]:
    """Pids of the fleet's processes called `name` or `name-<n>` (replicas)."""
    return [p.popen.pid for p in fleet.stack.processes if p.name == name or p.name.startswith(name + "-")]


def _tree(fleet: Fleet, name: str) -> list[int]:
    return [pid for root in _roots(fleet, name) for pid in process_tree(root)]


@dataclass
class Cost:
    """One cost phase: a bot at one offered rate, no card limit, the quick model."""

    target: str
    label: str  # "postgres", "sqlite", "two replicas", "sdk bots"
    offered_per_s: float
    sent: int
    answered: int  # final within cost_collect_s of the last message
    lost: int
    doubled: int
    answers_per_s: float  # finals that came while messages were being sent, per second
    final_p50_ms: float
    final_p99_ms: float
    elapsed_s: float  # from the first message until the work was done (or the window closed)
    cpu: dict[str, float]  # cores, per process group, over elapsed_s

    def cpu_ms_per_answer(self, names: tuple[str, ...]) -> float:
        cores = sum(self.cpu.get(name, 0.0) for name in names)
        return cores * self.elapsed_s * 1000 / self.answered if self.answered else math.nan


def _answers_while_sending(sent: list[Sent], report: Report) -> float:
    start, end = sent[0].sent_at, sent[-1].sent_at
    finals = [o.final_at for o in report.outcomes if o.answers and o.final_at is not None]
    return sum(1 for f in finals if start <= f <= end) / max(end - start, 1e-3)


# -- the runs -----------------------------------------------------------------------------------


class Suite:
    """The PostgreSQL fleet: channel 1 (app fleet-1) carries the card QPS limit and the latency
    run, channels 2..(1 + cost_channels) the cost run, and all of them count for the memory
    figure. Baseline bots get apps of their own on the same imsim. The SQLite fleet has the cost
    channels only."""

    fleet: Fleet
    sender: Sender

    def __init__(self, params: Params, log: Any, logs_to: Path | None = None) -> None:
        self.params, self.log, self.logs_to = params, log, logs_to

    def config(self, database: str, channels: int) -> FleetConfig:
        p = self.params
        budget = p.card_qps_budget if p.card_qps_budget is not None else p.card_qps_limit
        return FleetConfig(
            connectors=p.connectors,
            routers=p.routers,
            runners=p.runners,
            channels=channels,
            database=database,
            card_latency_ms=p.card_latency_ms,
            card_qps_limit=None,  # fleet-1's alone, below
            model_ttft_ms=p.model_ttft_ms,
            model_tokens_per_s=p.model_tokens_per_s,
            answer_tokens=p.answer_tokens,
            extra_env=p.imgate_env(budget),
        )

    def run(self) -> dict[str, Any]:
        p = self.params
        results: dict[str, Any] = {}
        channels = max(p.memory_channels, p.cost_channels + 1)
        with self._fleet(self.config(p.database, channels), "postgres") as fleet:
            results["memory"] = self.memory_idle() if p.memory_channels else {}
            self.log("latency run")
            results["phases"] = self.latency()
            self.log("first contact")
            results["first_contact"] = self.first_contact()
            if p.feishu_rates:
                self.log("Feishu latency run")
                results["feishu"] = self.feishu()
            results["cost"] = []
            if not p.cost_rates:  # --set cost_rates= : no cost run (nor its SQLite repeat)
                return results
            self.log("cost run")
            results["cost"] = self.cost(fleet.client_ids[1 : p.cost_channels + 1], p.database, baseline=True)
            results["memory"]["imgate_busy_mb"] = rss_mb(_tree(fleet, "connector"))
            if p.cost_two_replicas:
                fleet.start_replica("router")
                fleet.start_replica("agent-runner")
                apps = fleet.client_ids[1 : p.cost_channels + 1]
                results["cost"] += self.cost(apps, "two replicas", baseline=False, rates=p.cost_rates[-1:])
        if p.cost_sqlite:
            with self._fleet(self.config("sqlite", p.cost_channels), "sqlite") as fleet:
                self.log("cost run on SQLite")
                results["cost"] += self.cost(fleet.client_ids, "sqlite", baseline=False)
                results["sqlite_locked"] = sum(
                    path.read_text(errors="replace").count("database is locked")
                    for path in fleet.log_dir.glob("*.log")
                )
        return results

    @contextlib.contextmanager
    def _fleet(self, config: FleetConfig, name: str) -> Iterator[Fleet]:
        with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
            began = time.monotonic()
            with Fleet(config, Path(tmp)) as fleet:
                self.log(
                    f"fleet up in {time.monotonic() - began:.1f} s: {config.channels} channels, "
                    f"{config.connectors} connector, {config.routers} router, {config.runners} runner, "
                    f"{config.database}"
                )
                self.fleet = fleet
                self.sender = Sender(fleet.imsim)
                try:
                    yield fleet
                finally:
                    self.sender.close()
            if self.logs_to is not None:  # every process's log, once they have all stopped
                shutil.copytree(fleet.log_dir, self.logs_to / name, dirs_exist_ok=True)
                self.log(f"logs: {self.logs_to / name}")

    def warm(
        self,
        apps: list[str],
        users: int = 1,
        rate: float = 20.0,
        user: str = "user",
        platform: str = DINGTALK,
    ) -> None:
        """An answered message from each user of each app first, so connections, tokens, caches,
        pools and the users themselves exist before anything is timed: the figures are a bot's
        steady state, not its first contact (the bot's first contact with a user costs more)."""
        sent = self.sender.drive(apps, len(apps) * users, rate, users, "w", user, platform)
        collect_outcomes(self.fleet.imsim, sent, timeout_s=60 + len(sent) / rate, settle_s=0)
        wait_model_idle(self.fleet, quiet_s=self.params.settle_s)

    def memory_idle(self) -> dict[str, float]:
        """Figure 7: connector RSS with every channel connected and settled, before traffic."""
        p, fleet = self.params, self.fleet
        time.sleep(3)  # leases, status and reply consumers settle
        memory = {"imgate_idle_mb": rss_mb(_tree(fleet, "connector"))}
        apps = [f"base-mem-{i + 1}" for i in range(p.memory_channels)]
        bot = BaselineBot(fleet, "baseline-memory", apps, 0.0, p.baseline_workers)
        bot.start({"card_latency_ms": p.card_latency_ms})
        time.sleep(3)
        memory["baseline_idle_mb"] = rss_mb(process_tree(bot.pid))
        bot.stop()
        self.log(
            f"memory, {p.memory_channels} channels connected: connector {memory['imgate_idle_mb']:.0f} MB, "
            f"baseline {memory['baseline_idle_mb']:.0f} MB"
        )
        return memory

    def latency(self) -> dict[str, list[Phase]]:
        p, fleet = self.params, self.fleet
        faults = {"card_latency_ms": p.card_latency_ms, "card_qps_limit": p.card_qps_limit}
        imgate_app = fleet.client_ids[0]
        fleet.sim("PATCH", f"/apps/{imgate_app}/faults/config", faults)
        bots = {
            CHUNK: BaselineBot(fleet, "baseline-chunk", ["base-chunk"], 0.0, p.baseline_workers),
            INTERVAL: BaselineBot(
                fleet, "baseline-interval", ["base-interval"], p.baseline_update_every_s, p.baseline_workers
            ),
        }
        phases: dict[str, list[Phase]] = {t: [] for t in TARGETS}
        self.warm(
            [imgate_app], max(2, math.ceil(max(p.rates) * p.user_gap_s)), rate=min(p.rates[0] * 5, 10.0)
        )
        for rate in p.rates:
            count = max(p.min_messages, round(rate * p.seconds_per_rate))
            users = max(2, math.ceil(rate * p.user_gap_s))
            collect_s = count / rate + p.collect_grace_s
            for target in TARGETS:
                bot = bots.get(target)
                if bot is not None:
                    bot.start(faults)  # a fresh process per phase: no backlog carried over
                    self.warm(bot.apps)
                apps = [imgate_app] if bot is None else bot.apps
                before = card_counters(fleet.imsim, apps)
                sent = self.sender.drive(apps, count, rate, users, PREFIX[target])
                report = collect_outcomes(fleet.imsim, sent, timeout_s=collect_s, settle_s=p.settle_s)
                if bot is not None:
                    bot.stop()
                wait_model_idle(fleet, within_s=collect_s, quiet_s=p.settle_s)
                after = card_counters(fleet.imsim, apps)
                phase = judge(target, rate, sent, report, p.answer_tokens, _minus(after, before))
                phases[target].append(phase)
                self.log(
                    f"  {target:<17} {rate:>4g} msg/s: {phase.complete}/{phase.sent} complete, "
                    f"{phase.lost} lost, {phase.doubled} doubled, first text p50 "
                    f"{percentile(phase.first_text_ms, 0.5):.0f} ms, "
                    f"{phase.calls_per_reply:.1f} calls/reply, "
                    f"{phase.throttled_403 + phase.throttled_429} refused"
                )
        return phases

    def first_contact(self) -> Phase:
        """imgate at the first rate, each message from a user it has never seen: the user is
        created (auto mapping) on the way. The baseline has no users to create: its figure is
        the known-user phase's."""
        p, fleet = self.params, self.fleet
        rate, count = p.rates[0], p.first_contact_messages
        app = fleet.client_ids[0]
        before = card_counters(fleet.imsim, [app])
        sent = self.sender.drive([app], count, rate, count, "f", user="newcomer")
        report = collect_outcomes(
            fleet.imsim, sent, timeout_s=count / rate + p.collect_grace_s, settle_s=p.settle_s
        )
        wait_model_idle(fleet, quiet_s=p.settle_s)
        after = card_counters(fleet.imsim, [app])
        phase = judge(IMGATE, rate, sent, report, p.answer_tokens, _minus(after, before))
        self.log(
            f"  first contact {rate:g} msg/s: {phase.complete}/{phase.sent} complete, first text p50 "
            f"{percentile(phase.first_text_ms, 0.5):.0f} ms"
        )
        return phase

    def feishu(self) -> list[Phase]:
        """imgate on one Feishu app on imsim (imsim's URL as the channel's domain), with Feishu's
        limits as imsim keeps them by default and the DingTalk card latency on every API call:
        at each of `feishu_rates`, the latency phase's traffic and model."""
        p, fleet = self.params, self.fleet
        fleet.sim("POST", f"/{FEISHU}/apps", {"app_id": FEISHU_APP, "app_secret": f"{FEISHU_APP}-secret"})
        latency = {"api_latency_ms": p.card_latency_ms}  # Feishu's limits stay at imsim's defaults
        fleet.sim("PATCH", f"/{FEISHU}/apps/{FEISHU_APP}/faults/config", latency)
        budget = p.card_qps_budget if p.card_qps_budget is not None else p.card_qps_limit
        with fleet.admin_api() as api:
            agent = api.get("/api/v1/agents").json()[0]["id"]
            created = api.post(
                "/api/v1/channels",
                json={
                    "name": FEISHU_APP,
                    "platform": FEISHU,
                    "default_agent_id": agent,
                    "card_qps": round(budget),
                    "config": {
                        "app_id": FEISHU_APP,
                        "app_secret": f"{FEISHU_APP}-secret",
                        "domain": fleet.imsim,
                    },
                    "enabled": True,
                },
            )
            created.raise_for_status()
            status = f"/api/v1/channels/{created.json()['id']}/status"
            wait_until(lambda: api.get(status).json()["state"] == "connected", 60, "the Feishu channel")
        phases: list[Phase] = []
        users = max(2, math.ceil(max(p.feishu_rates) * p.user_gap_s))
        self.warm([FEISHU_APP], users, rate=min(p.feishu_rates[0] * 5, 10.0), platform=FEISHU)
        for rate in p.feishu_rates:
            count = max(p.min_messages, round(rate * p.seconds_per_rate))
            users = max(2, math.ceil(rate * p.user_gap_s))
            before = feishu_counters(fleet.imsim, FEISHU_APP)
            sent = self.sender.drive([FEISHU_APP], count, rate, users, "l", platform=FEISHU)
            report = collect_outcomes(
                fleet.imsim, sent, timeout_s=count / rate + p.collect_grace_s, settle_s=p.settle_s
            )
            wait_model_idle(fleet, quiet_s=p.settle_s)
            after = feishu_counters(fleet.imsim, FEISHU_APP)
            phase = judge(FEISHU, rate, sent, report, p.answer_tokens, _minus(after, before))
            phases.append(phase)
            self.log(
                f"  feishu {rate:>4g} msg/s: {phase.complete}/{phase.sent} complete, {phase.lost} lost, "
                f"{phase.doubled} doubled, first text p50 {percentile(phase.first_text_ms, 0.5):.0f} ms, "
                f"{phase.calls_per_reply:.1f} CardKit calls/reply, "
                f"{phase.throttled_429 + phase.refused_other} refused"
            )
        return phases

    def cost(
        self, apps: list[str], label: str, *, baseline: bool, rates: list[float] | None = None
    ) -> list[Cost]:
        """At each rate: the SDK-pattern bots (one process per channel), then imgate."""
        p, fleet = self.params, self.fleet
        fleet.model_sim(
            "PATCH",
            "/config",
            {
                "ttft_ms": p.cost_model_ttft_ms,
                "tokens_per_s": p.cost_model_tokens_per_s,
                "answer_tokens": p.cost_answer_tokens,
            },
        )
        faults = {"card_latency_ms": p.cost_card_latency_ms}
        for app in apps:
            fleet.sim("PATCH", f"/apps/{app}/faults/config", faults)
        bots: list[BaselineBot] = []
        if baseline:
            for i in range(len(apps)):
                name = f"base-cost-{i + 1}"
                bot = BaselineBot(
                    fleet,
                    f"baseline-cost-{i + 1}",
                    [name],
                    p.baseline_update_every_s,
                    p.cost_baseline_workers,
                )
                bots.append(bot.start(faults))
            self.warm([a for bot in bots for a in bot.apps], rate=20.0)
        # imgate keeps users (the baseline has none): its users exist before anything is timed
        self.warm(apps, p.cost_users_per_channel, rate=20.0, user="costuser")
        results: list[Cost] = []
        try:
            for rate in rates or p.cost_rates:
                if bots:
                    roots = {"baseline": [bot.pid for bot in bots]}
                    bot_apps = [a for bot in bots for a in bot.apps]
                    results.append(self._cost_phase(INTERVAL, "sdk bots", bot_apps, rate, roots))
                roots = {name: _roots(fleet, name) for name in SERVICE_NAMES}
                results.append(self._cost_phase(IMGATE, label, apps, rate, roots))
        finally:
            for bot in bots:
                bot.stop()
            fleet.model_sim(
                "PATCH",
                "/config",
                {
                    "ttft_ms": p.model_ttft_ms,
                    "tokens_per_s": p.model_tokens_per_s,
                    "answer_tokens": p.answer_tokens,
                },
            )
        return results

    def _cost_phase(
        self, target: str, label: str, apps: list[str], rate: float, roots: dict[str, list[int]]
    ) -> Cost:
        p, fleet = self.params, self.fleet
        count = round(rate * p.cost_seconds)
        roots = {**roots, **{name: _roots(fleet, name) for name in HARNESS_NAMES}}
        meter = CpuMeter(roots)
        began = time.monotonic()
        meter.start()
        sent = self.sender.drive(apps, count, rate, p.cost_users_per_channel, PREFIX[target], "costuser")
        # Until the work is done or the window closes; imsim is read only between quiet spells
        # of the model (reading thousands of timelines would load it while the bot catches up).
        window_ends = time.monotonic() + p.cost_collect_s
        while True:
            wait_model_idle(fleet, within_s=max(0.0, window_ends - time.monotonic()), quiet_s=p.settle_s)
            report = read_outcomes(fleet.imsim, sent)
            if not report.lost or time.monotonic() >= window_ends:
                break
        cpu = meter.stop()
        elapsed = time.monotonic() - began
        cutoff = sent[-1].sent_at + p.cost_collect_s
        finals = [
            (o.final_at - o.sent.sent_at) * 1000
            for o in report.outcomes
            if o.final_at is not None and o.final_at <= cutoff
        ]
        cost = Cost(
            target=target,
            label=label,
            offered_per_s=(len(sent) - 1) / max(sent[-1].sent_at - sent[0].sent_at, 1e-3),
            sent=len(sent),
            answered=len(finals),
            lost=len(sent) - len(finals),
            doubled=len(report.doubled),
            answers_per_s=_answers_while_sending(sent, report),
            final_p50_ms=percentile(finals, 0.5),
            final_p99_ms=percentile(finals, 0.99),
            elapsed_s=elapsed,
            cpu=cpu,
        )
        bot_names = ("baseline",) if target != IMGATE else SERVICE_NAMES
        self.log(
            f"  {label:<13} {rate:>4g} msg/s: {cost.answered}/{cost.sent} answered, "
            f"{cost.answers_per_s:.1f}/s while sending, final p50 {cost.final_p50_ms:.0f} ms, "
            f"CPU {cost.cpu_ms_per_answer(bot_names):.1f} ms/answer"
        )
        return cost


# -- figures ------------------------------------------------------------------------------------


def figures(params: Params, results: dict[str, Any]) -> list[Figure]:
    phases: dict[str, list[Phase]] = results["phases"]
    costs: list[Cost] = results["cost"]
    memory: dict[str, float] = results["memory"]
    out: list[Figure] = []

    def add(
        key: str,
        name: str,
        unit: str,
        values: dict[str, float | None],
        goal: str = "",
        met: bool | None = None,
    ) -> None:
        out.append(
            Figure(key, name, unit, values.get(IMGATE), values.get(CHUNK), values.get(INTERVAL), goal, met)
        )

    def judged(value: float | None, ok: bool) -> bool | None:
        return None if value is None or not math.isfinite(value) else ok

    first = {t: phases[t][0] for t in TARGETS}
    tag = f"at {params.rates[0]:g} msg/s"
    ttft_goal = params.model_ttft_ms + 40
    for attr, number, what in (
        ("thinking_ms", 1, "thinking card visible"),
        ("first_text_ms", 2, "first visible token"),
        ("final_ms", 3, "final answer visible"),
    ):
        for share, label in ((0.5, "p50"), (0.99, "p99")):
            values = {t: percentile(getattr(first[t], attr), share) for t in TARGETS}
            value, base = values[IMGATE], values[INTERVAL]
            goal, met = "", None
            if attr == "thinking_ms" and label == "p50":
                goal, met = "<= 60", judged(value, value <= 60)
            if attr == "first_text_ms" and label == "p50":
                goal = f"<= 0.8x base 0.8s and <= TTFT+40 = {ttft_goal}"
                met = judged(value, value <= 0.8 * base and value <= ttft_goal)
            add(
                f"{attr}_{label}",
                f"{number}. {what} {label}, {tag}, known users",
                "ms",
                dict(values),
                goal,
                met,
            )
    newcomer: Phase = results["first_contact"]
    value = percentile(newcomer.first_text_ms, 0.5)
    base = percentile(first[INTERVAL].first_text_ms, 0.5)
    add(
        "first_text_ms_p50_first_contact",
        f"2. first visible token p50, {tag}, first contact of each user",
        "ms",
        {IMGATE: value, CHUNK: percentile(first[CHUNK].first_text_ms, 0.5), INTERVAL: base},
        "<= 1.0x base 0.8s",
        judged(value, value <= base),
    )
    add(
        "card_calls_per_reply",
        f"4. card API calls per message, {tag}",
        "calls",
        {t: first[t].calls_per_reply for t in TARGETS},
    )
    add(
        "throttled_403_429",
        f"4. card calls refused 403/429, {tag}",
        "calls",
        {t: float(first[t].throttled_403 + first[t].throttled_429) for t in TARGETS},
        "0",
        first[IMGATE].throttled_403 + first[IMGATE].throttled_429 == 0,
    )
    model_ms = params.model_ms()
    for i, rate in enumerate(params.rates):
        at = {t: phases[t][i] for t in TARGETS}
        ours = at[IMGATE]
        tag_r = f"{rate:g} msg/s, {params.card_qps_limit} QPS limit"
        add(
            f"complete_at_{rate:g}",
            f"5. complete answers of {ours.sent}, {tag_r}",
            "msgs",
            {t: float(at[t].complete) for t in TARGETS},
            str(ours.sent),
            ours.complete == ours.sent,
        )
        for attr in ("lost", "doubled"):
            add(
                f"{attr}_at_{rate:g}",
                f"5. {attr}, {tag_r}",
                "msgs",
                {t: float(getattr(at[t], attr)) for t in TARGETS},
                "0",
                getattr(ours, attr) == 0,
            )
        p99 = {t: percentile(at[t].first_text_ms, 0.99) for t in TARGETS}
        goal_rate = rate == 10  # the goals: first visible p99 <= 1 s at 10 messages/s
        add(
            f"first_text_p99_ms_at_{rate:g}",
            f"5. first visible token p99, {tag_r}",
            "ms",
            dict(p99),
            "<= 1000" if goal_rate else "",
            judged(p99[IMGATE], p99[IMGATE] <= 1000) if goal_rate else None,
        )
        final99 = {t: percentile(at[t].final_ms, 0.99) for t in TARGETS}
        slack = {10.0: 1000, 30.0: 3000}.get(rate)
        add(
            f"final_p99_ms_at_{rate:g}",
            f"5. final answer p99, {tag_r}",
            "ms",
            dict(final99),
            f"<= model {model_ms:,.0f} + {slack:,}" if slack else "",
            judged(final99[IMGATE], final99[IMGATE] <= model_ms + slack) if slack else None,
        )
        add(
            f"throttled_at_{rate:g}",
            f"5. card calls refused 403/429, {tag_r}",
            "calls",
            {t: float(at[t].throttled_403 + at[t].throttled_429) for t in TARGETS},
            "0",
            ours.throttled_403 + ours.throttled_429 == 0,
        )
        used = {t: at[t].card_calls_per_s / params.card_qps_limit * 100 for t in TARGETS}
        top = rate == max(params.rates)
        add(
            f"card_budget_used_at_{rate:g}",
            f"5. card calls/s while answering, % of the {params.card_qps_limit} QPS limit, {rate:g} msg/s",
            "%",
            dict(used),
            ">= 90" if top else "",
            judged(used[IMGATE], used[IMGATE] >= 90) if top else None,
        )
    _feishu_figures(params, phases[IMGATE], results.get("feishu", []), out)
    _cost_figures(params, costs, add, judged)
    locked = results.get("sqlite_locked")
    if locked is not None:
        add(
            "sqlite_locked",
            "7. 'database is locked' in the SQLite fleet's logs",
            "lines",
            {IMGATE: float(locked)},
            "0",
            locked == 0,
        )
    add(
        "memory_idle_mb",
        f"8. RSS with {params.memory_channels} channels connected: connector / baseline process",
        "MB",
        {IMGATE: memory.get("imgate_idle_mb"), CHUNK: memory.get("baseline_idle_mb")},
        "<= 100",
        judged(memory.get("imgate_idle_mb"), (memory.get("imgate_idle_mb") or 0) <= 100),
    )
    add(
        "memory_busy_mb",
        f"8. connector RSS, {params.memory_channels} channels, after the cost run",
        "MB",
        {IMGATE: memory.get("imgate_busy_mb")},
    )
    return out


def _feishu_figures(params: Params, dingtalk: list[Phase], feishu: list[Phase], out: list[Figure]) -> None:
    """Feishu's rows: imgate on Feishu in the imgate column, imgate on DingTalk at the same rate
    in the baseline column (there is no Feishu SDK-pattern bot), so the ratio is Feishu ÷ DingTalk."""
    on_dingtalk = {phase.rate: phase for phase in dingtalk}
    for phase in feishu:
        out += _feishu_rate_figures(phase, on_dingtalk.get(phase.rate))


def _feishu_rate_figures(phase: Phase, ding: Phase | None) -> list[Figure]:
    tag = f"Feishu, {phase.rate:g} msg/s (baseline: imgate on DingTalk)"
    rows: list[Figure] = []

    def row(key: str, name: str, unit: str, pick: Any, goal: str = "", met: bool | None = None) -> None:
        base = pick(ding) if ding is not None else None
        key = f"feishu_{key}_at_{phase.rate:g}"
        rows.append(Figure(key, f"9. {name}, {tag}", unit, pick(phase), base, goal=goal, met=met))

    for attr, what, shares in (
        ("thinking_ms", "thinking card visible", (0.5,)),
        ("first_text_ms", "first visible text", (0.5, 0.99)),
        ("final_ms", "final answer visible", (0.5, 0.99)),
    ):
        for share in shares:
            label = f"p{share * 100:g}"
            row(
                f"{attr}_{label}",
                f"{what} {label}",
                "ms",
                lambda ph, attr=attr, share=share: percentile(getattr(ph, attr), share),
            )
    complete = phase.complete == phase.sent
    row(
        "complete",
        f"complete answers of {phase.sent}",
        "msgs",
        lambda ph: float(ph.complete),
        str(phase.sent),
        complete,
    )
    for attr in ("lost", "doubled"):
        none = getattr(phase, attr) == 0
        row(attr, attr, "msgs", lambda ph, attr=attr: float(getattr(ph, attr)), "0", none)
    row("card_calls_per_reply", "card API calls per message", "calls", lambda ph: ph.calls_per_reply)
    row(
        "refused",
        "calls refused (HTTP 429 or another error status; DingTalk: 403/429)",
        "calls",
        lambda ph: float(ph.throttled_403 + ph.throttled_429 + ph.refused_other),
        "0",
        phase.throttled_429 + phase.refused_other == 0,
    )
    return rows


def _cost_figures(params: Params, costs: list[Cost], add: Any, judged: Any) -> None:
    if not params.cost_rates:
        return
    n = params.cost_channels
    quick = params.cost_model_ms()
    by: dict[tuple[str, float], Cost] = {}
    for c in costs:
        by[(c.label if c.target == IMGATE else "sdk bots", _nominal(params, c))] = c
    top = max(params.cost_rates)
    for rate in params.cost_rates:
        ours, sdk = by.get((params.database, rate)), by.get(("sdk bots", rate))
        if ours is None:
            continue
        tag = f"{rate:g} msg/s offered, {n} channels, no card limit"

        def pair(value: Any, ours: Cost = ours, sdk: Cost | None = sdk) -> dict[str, float | None]:
            return {IMGATE: value(ours), INTERVAL: value(sdk) if sdk is not None else None}

        add(
            f"cost_answered_at_{rate:g}",
            f"6. answered within {params.cost_collect_s:g} s, {tag}",
            "msgs",
            pair(lambda c: float(c.answered)),
            str(ours.sent),
            ours.answered == ours.sent,
        )
        add(
            f"cost_answers_per_s_at_{rate:g}",
            f"6. answers/s while sending, {tag}",
            "answers/s",
            pair(lambda c: c.answers_per_s),
            f">= {0.97 * rate:g}" if rate == top else "",
            judged(ours.answers_per_s, ours.answers_per_s >= 0.97 * rate) if rate == top else None,
        )
        add(
            f"cost_final_p50_at_{rate:g}", f"6. final answer p50, {tag}", "ms", pair(lambda c: c.final_p50_ms)
        )
        add(
            f"cost_final_p99_at_{rate:g}",
            f"6. final answer p99, {tag}",
            "ms",
            pair(lambda c: c.final_p99_ms),
            f"<= model {quick:,.0f} + 1,000" if rate == top else "",
            judged(ours.final_p99_ms, ours.final_p99_ms <= quick + 1000) if rate == top else None,
        )
        per_answer = {IMGATE: ours.cpu_ms_per_answer(SERVICE_NAMES)}
        if sdk is not None:
            per_answer[INTERVAL] = sdk.cpu_ms_per_answer(("baseline",))
        first_rate = rate == params.cost_rates[0]
        add(
            f"cost_cpu_ms_per_answer_at_{rate:g}",
            f"6. CPU per answer, all bot processes, {tag}",
            "ms",
            per_answer,
            "<= 1.0x SDK bots" if first_rate and sdk is not None else "",
            judged(per_answer[IMGATE], per_answer[IMGATE] <= per_answer.get(INTERVAL, math.nan))
            if first_rate and sdk is not None
            else None,
        )
        for service in SERVICE_NAMES:
            add(
                f"cost_cpu_ms_{service}_at_{rate:g}",
                f"6. CPU per answer: {service}, {rate:g} msg/s",
                "ms",
                {IMGATE: ours.cpu_ms_per_answer((service,))},
            )
        add(
            f"cost_cpu_machine_at_{rate:g}",
            f"6. whole machine busy meanwhile, {rate:g} msg/s",
            "cores",
            pair(lambda c: c.cpu.get("machine")),
        )
    two = by.get(("two replicas", top))
    one = by.get((params.database, top))
    if two is not None and one is not None:
        add(
            "cost_answers_per_s_two_replicas",
            f"6. answers/s while sending, {top:g} msg/s, 2 routers + 2 runners",
            "answers/s",
            {IMGATE: two.answers_per_s},
            f"1 router + 1 runner: {one.answers_per_s:.1f}",
        )
    for rate in params.cost_rates:
        lite, pg = by.get(("sqlite", rate)), by.get((params.database, rate))
        if lite is None or pg is None:
            continue
        add(
            f"sqlite_answers_per_s_at_{rate:g}",
            f"7. SQLite: answers/s while sending, {rate:g} msg/s",
            "answers/s",
            {IMGATE: lite.answers_per_s},
            f"within 20 % of PostgreSQL's {pg.answers_per_s:.1f}",
            judged(lite.answers_per_s, lite.answers_per_s >= 0.8 * pg.answers_per_s),
        )
        add(
            f"sqlite_final_p50_at_{rate:g}",
            f"7. SQLite: final answer p50, {rate:g} msg/s",
            "ms",
            {IMGATE: lite.final_p50_ms},
            f"within 20 % of PostgreSQL's {pg.final_p50_ms:,.0f}",
            judged(lite.final_p50_ms, lite.final_p50_ms <= 1.2 * pg.final_p50_ms),
        )


def _nominal(params: Params, cost: Cost) -> float:
    """The configured rate a phase was offered (the measured one wobbles around it)."""
    return min(params.cost_rates, key=lambda r: abs(r - cost.offered_per_s))


def run(params: Params, log: Any, logs_to: Path | None = None) -> tuple[list[Figure], dict[str, Any]]:
    """Every end-to-end figure, and the raw per-phase data for the JSON."""
    results = Suite(params, log, logs_to).run()
    raw = {
        "phases": {t: [p.summary() for p in ps] for t, ps in results["phases"].items()},
        "first_contact": results["first_contact"].summary(),
        "feishu": [p.summary() for p in results.get("feishu", [])],
        "cost": [asdict(c) for c in results["cost"]],
        "memory": results["memory"],
        "sqlite_locked": results.get("sqlite_locked"),
    }
    return figures(params, results), raw
