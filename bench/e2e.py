"""End-to-end figures: the product as processes (tools/fleet.py) against imsim and modelsim,
beside the SDK-style baseline bot (baseline_bot.py) on the same imsim and the same model server.

Three runs, each on a fleet of its own:

- latency: one channel (one DingTalk app) with a card QPS limit; messages at each rate in turn
  to imgate, then to the baseline updating the card on every chunk, then to the baseline
  updating it every 0.8 s (each baseline on an app of its own with the same faults). Figures
  1-5 come from here: thinking / first text / final visible, card calls per reply, 403/429,
  complete / lost / doubled per rate.
- throughput: 50 channels, no QPS limit, a steady offered load above the goal; replies/s in the
  steady window, and CPU per service from /proc (figure 6).
- memory: 100 channels connected, connector RSS against the baseline process's (figure 7).

What users saw is read back from imsim with `collect_outcomes`, so both bots are judged alike.
"""

import math
import shutil
import sys
import tempfile
import threading
import time
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
    # throughput run
    throughput_channels: int = 50
    throughput_rate: float = 250.0
    throughput_seconds: float = 20.0
    throughput_users_per_channel: int = 10
    throughput_warmup_s: float = 5.0
    # memory run
    memory_channels: int = 100
    # the product
    connectors: int = 1
    routers: int = 1
    runners: int = 1
    throughput_routers: int = 2
    throughput_runners: int = 2
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
    throughput_collect_s: float = 30.0

    @classmethod
    def smoke(cls) -> "Params":
        return cls(
            rates=[2.0],
            seconds_per_rate=3.0,
            min_messages=8,
            answer_tokens=12,
            throughput_channels=3,
            throughput_rate=15.0,
            throughput_seconds=2.0,
            throughput_users_per_channel=4,
            throughput_warmup_s=0.5,
            memory_channels=4,
            throughput_routers=1,
            throughput_runners=1,
            collect_grace_s=5.0,
            throughput_collect_s=10.0,
            settle_s=0.5,
        )

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

    def send(self, client_id: str, user: str, prefix: str) -> Sent:
        with self._lock:
            self._count += 1
            text = f"{prefix}{self._count:06d}"
        http = self._http()
        sent_at = time.time()
        response = http.post(
            f"{self.imsim}/sim/apps/{client_id}/messages",
            json={"text": text, "sender_staff_id": user, "sender_nick": user},
        )
        response.raise_for_status()
        body = response.json()
        return Sent(client_id, body["msg_id"], body["conversation_id"], text, sent_at)

    def drive(self, apps: list[str], count: int, rate: float, users: int, prefix: str) -> list[Sent]:
        """`count` messages at `rate`/s, round-robin over the apps and, per app, over `users`."""
        futures: list[Future[Sent]] = []
        started = time.monotonic()
        for k in range(count):
            time.sleep(max(0.0, started + k / rate - time.monotonic()))
            user = (k // len(apps)) % users
            futures.append(self._pool.submit(self.send, apps[k % len(apps)], f"user{user + 1}", prefix))
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
    # What went wrong, message by message (doubled first, then a few lost), for the post-mortem.
    examples: list[str] = field(default_factory=list)

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
class Throughput:
    target: str
    offered_per_s: float
    sent: int
    answered: int
    lost: int
    doubled: int
    replies_per_s: float
    window_s: float
    cpu: dict[str, float]
    final_p50_ms: float


def _steady_rate(sent: list[Sent], report: Report, warmup_s: float) -> tuple[float, float]:
    """Final answers per second between `warmup_s` after the first send and the last send."""
    start = sent[0].sent_at + warmup_s
    end = sent[-1].sent_at
    window = max(end - start, 1e-3)
    finals = [o.final_at for o in report.outcomes if o.answers and o.final_at is not None]
    return sum(1 for f in finals if start <= f <= end) / window, window


# -- the runs -----------------------------------------------------------------------------------


class Suite:
    """One fleet for every run: channel 1 (app fleet-1) carries the card QPS limit and the
    latency run, channels 2..(1 + throughput_channels) the throughput run, and all of them
    count for the memory figure. Baseline bots get apps of their own on the same imsim."""

    fleet: Fleet
    sender: Sender

    def __init__(self, params: Params, log: Any, logs_to: Path | None = None) -> None:
        self.params, self.log, self.logs_to = params, log, logs_to

    def config(self) -> FleetConfig:
        p = self.params
        budget = p.card_qps_budget if p.card_qps_budget is not None else p.card_qps_limit
        return FleetConfig(
            connectors=p.connectors,
            routers=p.routers,
            runners=p.runners,
            channels=max(p.memory_channels, p.throughput_channels + 1),
            database=p.database,
            card_latency_ms=p.card_latency_ms,
            card_qps_limit=None,  # fleet-1's alone, below
            model_ttft_ms=p.model_ttft_ms,
            model_tokens_per_s=p.model_tokens_per_s,
            answer_tokens=p.answer_tokens,
            extra_env=p.imgate_env(budget),
        )

    def run(self) -> tuple[dict[str, list[Phase]], dict[str, Throughput], dict[str, float]]:
        config = self.config()
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
                    memory = self.memory_idle()
                    self.log("latency run (figures 1-5)")
                    phases = self.latency()
                    self.log("throughput run (figure 6)")
                    throughput = self.throughput(memory)
                finally:
                    self.sender.close()
            if self.logs_to is not None:  # every process's log, once they have all stopped
                shutil.copytree(fleet.log_dir, self.logs_to, dirs_exist_ok=True)
                self.log(f"logs: {self.logs_to}")
        return phases, throughput, memory

    def warm(self, apps: list[str], users: int = 1, rate: float = 20.0) -> None:
        """An answered message from each user of each app first, so connections, tokens, caches,
        pools and the users themselves exist before anything is timed: the figures are a bot's
        steady state, not its first contact (the bot's first contact with a user costs more)."""
        sent = self.sender.drive(apps, len(apps) * users, rate, users, "w")
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
                phase = judge(
                    target, rate, sent, report, p.answer_tokens, {k: after[k] - before[k] for k in after}
                )
                phases[target].append(phase)
                self.log(
                    f"  {target:<17} {rate:>4g} msg/s: {phase.complete}/{phase.sent} complete, "
                    f"{phase.lost} lost, {phase.doubled} doubled, first text p50 "
                    f"{percentile(phase.first_text_ms, 0.5):.0f} ms, "
                    f"{phase.calls_per_reply:.1f} calls/reply, "
                    f"{phase.throttled_403 + phase.throttled_429} refused"
                )
        return phases

    def throughput(self, memory: dict[str, float]) -> dict[str, Throughput]:
        p, fleet = self.params, self.fleet
        faults = {"card_latency_ms": p.card_latency_ms}
        count = round(p.throughput_rate * p.throughput_seconds)
        n = p.throughput_channels
        targets: dict[str, tuple[list[str], BaselineBot | None]] = {}
        for target, name, every in ((CHUNK, "chunk", 0.0), (INTERVAL, "interval", p.baseline_update_every_s)):
            apps = [f"base-tp-{name}-{i + 1}" for i in range(n)]
            targets[target] = (
                apps,
                BaselineBot(fleet, f"baseline-tp-{name}", apps, every, p.baseline_workers),
            )
        targets[IMGATE] = (fleet.client_ids[1 : n + 1], None)
        results: dict[str, Throughput] = {}
        for target, (apps, bot) in targets.items():
            roots: dict[str, list[int]]
            if bot is None:
                roots = {name: _roots(fleet, name) for name in SERVICE_NAMES}
            else:
                bot.start(faults)
                roots = {"baseline": [bot.pid]}
            # imgate keeps users (the baseline does not): its users are known before the run
            self.warm(apps, p.throughput_users_per_channel if bot is None else 1, rate=50.0)
            roots.update({name: _roots(fleet, name) for name in HARNESS_NAMES})
            meter = CpuMeter(roots)
            meter.start()
            sent = self.sender.drive(
                apps, count, p.throughput_rate, p.throughput_users_per_channel, PREFIX[target]
            )
            cpu = meter.stop()
            # Only answers inside the sending window count, so one look afterwards is enough
            # (polling thousands of timelines would load imsim while the bot catches up).
            time.sleep(min(p.throughput_collect_s, 5.0))
            wait_model_idle(fleet, within_s=p.throughput_collect_s, quiet_s=p.settle_s)
            report = read_outcomes(fleet.imsim, sent)
            rate, window = _steady_rate(sent, report, p.throughput_warmup_s)
            offered = (len(sent) - 1) / max(sent[-1].sent_at - sent[0].sent_at, 1e-3)
            finals = [(o.final_at - o.sent.sent_at) * 1000 for o in report.outcomes if o.final_at is not None]
            results[target] = Throughput(
                target=target,
                offered_per_s=offered,
                sent=len(sent),
                answered=sum(1 for o in report.outcomes if o.answers),
                lost=len(report.lost),
                doubled=len(report.doubled),
                replies_per_s=rate,
                window_s=window,
                cpu=cpu,
                final_p50_ms=percentile(finals, 0.5),
            )
            self.log(
                f"  {target:<17} offered {offered:.0f}/s: {rate:.1f} replies/s steady, "
                f"{len(report.lost)} unanswered at the end; CPU "
                + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
            )
            if bot is not None:
                bot.stop()
            else:
                memory["imgate_busy_mb"] = rss_mb(_tree(fleet, "connector"))
        return results


# -- figures ------------------------------------------------------------------------------------


def figures(
    params: Params, phases: dict[str, list[Phase]], tp: dict[str, Throughput], memory: dict[str, float]
) -> list[Figure]:
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
    goal_ms = params.model_ttft_ms + 40
    for attr, number, what in (
        ("thinking_ms", 1, "thinking card visible"),
        ("first_text_ms", 2, "first visible token"),
        ("final_ms", 3, "final answer visible"),
    ):
        for share, label in ((0.5, "p50"), (0.99, "p99")):
            values = {t: percentile(getattr(first[t], attr), share) for t in TARGETS}
            if attr == "first_text_ms":
                value = values[IMGATE]
                goal, met = f"<= TTFT+40 = {goal_ms}", judged(value, value <= goal_ms)
            else:
                goal, met = "", None
            add(f"{attr}_{label}", f"{number}. {what} {label}, {tag}", "ms", dict(values), goal, met)
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
    )
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
        goal_rate = rate == 10  # the goal: p99 first visible <= 1 s at 10 messages/s
        add(
            f"first_text_p99_ms_at_{rate:g}",
            f"5. first visible token p99, {tag_r}",
            "ms",
            dict(p99),
            "<= 1000" if goal_rate else "",
            judged(p99[IMGATE], p99[IMGATE] <= 1000) if goal_rate else None,
        )
        add(
            f"throttled_at_{rate:g}",
            f"5. card calls refused 403/429, {tag_r}",
            "calls",
            {t: float(at[t].throttled_403 + at[t].throttled_429) for t in TARGETS},
        )
    n = params.throughput_channels
    ours_rate = tp[IMGATE].replies_per_s
    add(
        "replies_per_s",
        f"6. sustained replies/s, {n} channels, no QPS limit, offered {params.throughput_rate:g}/s",
        "replies/s",
        {t: tp[t].replies_per_s for t in TARGETS},
        ">= 200",
        ours_rate >= 200,
    )
    bot_cpu = {t: sum(tp[t].cpu.get(s, 0.0) for s in (*SERVICE_NAMES, "baseline")) for t in TARGETS}
    add(
        "cpu_bot_cores", "6. CPU of the bot: imgate's services / the baseline process", "cores", dict(bot_cpu)
    )
    for service in SERVICE_NAMES:
        add(f"cpu_{service}_cores", f"6. CPU {service}", "cores", {IMGATE: tp[IMGATE].cpu.get(service)})
    for name, label in (
        ("imsim", "imsim (DingTalk)"),
        ("model", "modelsim"),
        ("nats", "nats-server"),
        ("machine", "whole machine, every process"),
    ):
        add(
            f"cpu_{name}_cores",
            f"6. CPU {label} meanwhile",
            "cores",
            {t: tp[t].cpu.get(name) for t in TARGETS},
        )
    add(
        "memory_idle_mb",
        f"7. RSS with {params.memory_channels} channels connected: connector / baseline process",
        "MB",
        {IMGATE: memory.get("imgate_idle_mb"), CHUNK: memory.get("baseline_idle_mb")},
    )
    add(
        "memory_busy_mb",
        f"7. connector RSS, {params.memory_channels} channels, after the throughput run",
        "MB",
        {IMGATE: memory.get("imgate_busy_mb")},
    )
    return out


def run(params: Params, log: Any, logs_to: Path | None = None) -> tuple[list[Figure], dict[str, Any]]:
    """Every end-to-end figure, and the raw per-phase data for the JSON."""
    phases, throughput, memory = Suite(params, log, logs_to).run()
    raw = {
        "phases": {t: [p.summary() for p in ps] for t, ps in phases.items()},
        "throughput": {t: asdict(v) for t, v in throughput.items()},
        "memory": memory,
    }
    return figures(params, phases, throughput, memory), raw
