"""Per-app counters for tests and benchmarks: what the bot called, and how the stream went."""

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from imsim.counters import LATENCY_SAMPLES, ApiCallCounts, latency_summary
from imsim.identifiers import now_ms


@dataclass
class AppCounters:
    since: int = field(default_factory=now_ms)
    calls: ApiCallCounts = field(default_factory=ApiCallCounts)
    messages: int = 0  # messages users sent
    pushes: int = 0  # CALLBACK frames pushed, every kind below included
    redeliveries: int = 0  # pushed again because no 200 ACK came within redeliver_after
    forced_duplicates: int = 0  # pushed again on request although ACKed
    swallowed: int = 0  # pushed into a half-dead socket
    acks_by_kind: Counter[str] = field(default_factory=Counter)
    callback_acks_ok: int = 0
    ack_latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    pings_sent: int = 0
    pings_acked: int = 0
    pings_echoed: int = 0
    disconnects_sent: int = 0
    periodic_disconnects: int = 0
    connections_opened: int = 0
    connections_closed: int = 0
    connections_dropped: int = 0
    opens_refused: Counter[str] = field(default_factory=Counter)
    tokens_issued: int = 0

    def to_json(self, *, open_connections: int) -> dict[str, Any]:
        return {
            "since": self.since,
            "api_calls": self.calls.to_json(),
            "throttled": {"403": self.calls.by_status[403], "429": self.calls.by_status[429]},
            "stream": {
                "messages": self.messages,
                "pushes": self.pushes,
                "redeliveries": self.redeliveries,
                "forced_duplicates": self.forced_duplicates,
                "swallowed": self.swallowed,
            },
            "acks": {
                "callback": self.acks_by_kind["callback"],
                "callback_ok": self.callback_acks_ok,
                "ping": self.acks_by_kind["ping"],
                "disconnect": self.acks_by_kind["disconnect"],
                "unknown": self.acks_by_kind["unknown"],
            },
            "ack_latency_ms": latency_summary(self.ack_latencies_ms),
            "pings": {"sent": self.pings_sent, "acked": self.pings_acked, "echoed": self.pings_echoed},
            "connections": {
                "opened": self.connections_opened,
                "closed": self.connections_closed,
                "dropped": self.connections_dropped,
                "open": open_connections,
                "disconnects_sent": self.disconnects_sent,
                "periodic_disconnects": self.periodic_disconnects,
                "opens_refused": dict(sorted(self.opens_refused.items())),
            },
            "tokens_issued": self.tokens_issued,
        }
