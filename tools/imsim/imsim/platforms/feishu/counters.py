"""Per-app counters for tests and benchmarks: what the bot called, and how events travelled."""

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from imsim.counters import LATENCY_SAMPLES, ApiCallCounts, latency_summary
from imsim.identifiers import now_ms


@dataclass
class AppCounters:
    since: int = field(default_factory=now_ms)
    calls: ApiCallCounts = field(default_factory=ApiCallCounts)
    events: int = 0  # events users caused (messages sent)
    pushes: int = 0  # deliveries of an event, every kind below included
    frames: int = 0  # data frames those pushes took (more than pushes when payloads were split)
    redeliveries: int = 0  # pushed again because no 200 ACK came within the ACK wait
    forced_duplicates: int = 0  # pushed again on request although ACKed
    injected_duplicates: int = 0  # pushed twice at once by the duplicate_rate fault
    swallowed: int = 0  # pushed into a half-dead socket
    abandoned: int = 0  # never ACKed in time, and the redelivery schedule ran out
    acks_ok: int = 0  # code 200 within the ACK wait
    acks_late: int = 0  # code 200 after the ACK wait: too late, the event is redelivered
    acks_failed: int = 0  # any other code
    acks_unknown: int = 0  # for a frame imsim did not push (or no longer tracks)
    ack_latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    pings: int = 0
    pongs: int = 0
    unreadable_frames: int = 0
    connections_opened: int = 0
    connections_closed: int = 0
    connections_dropped: int = 0
    periodic_disconnects: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # endpoint calls and handshakes refused
    tokens_issued: int = 0
    cards_created: int = 0
    card_ops: Counter[str] = field(default_factory=Counter)  # content | settings | update
    messages_sent: Counter[str] = field(default_factory=Counter)  # reply | send
    uuid_repeats: int = 0  # sends and replies answered from an earlier one with the same uuid

    def to_json(self, *, open_connections: int) -> dict[str, Any]:
        return {
            "since": self.since,
            "api_calls": self.calls.to_json(),
            "throttled": {"429": self.calls.by_status[429]},
            "events": {
                "events": self.events,
                "pushes": self.pushes,
                "frames": self.frames,
                "redeliveries": self.redeliveries,
                "forced_duplicates": self.forced_duplicates,
                "injected_duplicates": self.injected_duplicates,
                "swallowed": self.swallowed,
                "abandoned": self.abandoned,
            },
            "acks": {
                "ok": self.acks_ok,
                "late": self.acks_late,
                "failed": self.acks_failed,
                "unknown": self.acks_unknown,
            },
            "ack_latency_ms": latency_summary(self.ack_latencies_ms),
            "pings": {"received": self.pings, "pongs": self.pongs},
            "unreadable_frames": self.unreadable_frames,
            "connections": {
                "opened": self.connections_opened,
                "closed": self.connections_closed,
                "dropped": self.connections_dropped,
                "open": open_connections,
                "periodic_disconnects": self.periodic_disconnects,
                "refused": dict(sorted(self.refused.items())),
            },
            "tokens_issued": self.tokens_issued,
            "cards": {
                "created": self.cards_created,
                **{op: self.card_ops[op] for op in ("content", "settings", "update")},
            },
            "messages": {
                "reply": self.messages_sent["reply"],
                "send": self.messages_sent["send"],
                "uuid_repeats": self.uuid_repeats,
            },
        }
